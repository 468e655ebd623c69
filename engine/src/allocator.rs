//! The C allocator's settings for a Quiver process, applied by its binaries at start-up.
//!
//! Reading Parquet and keeping rows in memory allocates and frees many buffers of tens of
//! kilobytes to a few megabytes. With glibc's defaults (up to eight arenas per core, buffers
//! above a moving threshold taken straight from `mmap`, freed memory trimmed back to the
//! kernel early) most of those buffers arrive as fresh pages, so a large share of a statement's
//! CPU time goes to page faults, zeroing pages and unmapping them again. Fewer arenas (one per
//! core) and thresholds that keep freed memory for the next buffer cut a whole `quiver sql`
//! statement's CPU time by about a sixth (the note of the change has the measurements).
//!
//! The price is memory kept after a peak: up to [`TRIM_THRESHOLD`] of freed memory per arena
//! stays with the process instead of going back to the kernel.

/// Allocations at least this large come from `mmap` (glibc's largest fixed threshold).
pub const MMAP_THRESHOLD: usize = 32 << 20;

/// Freed memory an arena keeps before it returns the rest to the kernel.
pub const TRIM_THRESHOLD: usize = 256 << 20;

/// Applies the settings above, and one arena per core (at least two), unless the user set
/// glibc's own `GLIBC_TUNABLES` (theirs win). Call it first thing in `main`, before any thread
/// starts: a Rust program that embeds Quiver may call it too. A no-op off glibc.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if std::env::var_os("GLIBC_TUNABLES").is_some() {
            return;
        }
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let arenas = cores.clamp(2, 64) as libc::c_int;
        // SAFETY: mallopt only changes the allocator's parameters; it takes the allocator's
        // own lock and is safe to call at any time.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, arenas);
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int);
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD as libc::c_int);
        }
    }
}
