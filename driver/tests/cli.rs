//! The `quiver` binary as a user runs it.

use std::process::Command;

fn quiver() -> Command {
    Command::new(env!("CARGO_BIN_EXE_quiver"))
}

#[test]
fn help_lists_every_subcommand() {
    let out = quiver().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for cmd in ["quickstart", "sql", "bench", "models", "config"] {
        assert!(text.contains(cmd), "--help lacks {cmd}:\n{text}");
    }
}

#[test]
fn quickstart_exits_zero_and_writes_no_progress_off_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let out = quiver()
        .args([
            "--models",
            dir.path().join("m").to_str().unwrap(),
            "quickstart",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("1797 rows"), "{stdout}");
    // Progress bars are hidden when stderr is not a terminal.
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn sql_errors_exit_non_zero_with_the_message() {
    let out = quiver()
        .args(["sql", "-e", "SELECT * FROM no_such_table"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: ") && err.contains("no_such_table"),
        "{err}"
    );
}

#[test]
fn unknown_config_key_is_named_on_the_command_line() {
    let out = quiver()
        .args(["-c", "quiver.nope=1", "sql", "-e", "SELECT 1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown configuration key 'quiver.nope'"),
        "{err}"
    );
}

#[test]
fn sql_file_runs_every_statement() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("q.sql");
    std::fs::write(&file, "SELECT 1 + 1 AS two;\nSELECT 'a;b' AS s;\n").unwrap();
    let out = quiver()
        .args(["sql", "-f", file.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("two") && text.contains("a;b"), "{text}");
}

#[test]
fn bench_summary_runs_small() {
    let out = quiver()
        .args([
            "bench",
            "summary",
            "--rows",
            "5000",
            "--features",
            "4",
            "--iters",
            "2",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for case in [
        "baseline-plain-sum-4f-5000r",
        "summary-local-memory-4f-5000r",
        "summary-embedded-memory-4f-5000r",
        "summary-embedded-parquet-disk-4f-5000r",
        "summary-embedded-parquet-memory-store-4f-5000r",
        "load-parquet-disk-into-local-cache-4f-5000r",
    ] {
        assert!(text.contains(case), "missing {case}:\n{text}");
    }
}

#[test]
fn bench_algorithms_runs_small() {
    let out = quiver()
        .args([
            "bench",
            "algorithms",
            "--rows",
            "3000",
            "--features",
            "3",
            "--k",
            "3",
            "--iters",
            "2",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for case in [
        "summary-3f-3000r-local",
        "linreg-3f-3000r-local",
        "logreg-3f-3000r-embedded",
        "kmeans-k3-3f-3000r-embedded",
        "predict-logreg-3f-3000r-local",
        "predict-kmeans-k3-3f-3000r-embedded",
    ] {
        assert!(text.contains(case), "missing {case}:\n{text}");
    }
    assert!(!text.contains("r2 below"), "{text}");
}
