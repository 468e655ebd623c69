//! `quiver-scheduler`: Ballista's scheduler with every Quiver function and codec.

use clap::Parser;
use quiver_executor::cli::{SchedulerArgs, init_logging};

fn main() {
    // Before any thread starts: the allocator's settings for analytics work.
    quiver_engine::allocator::tune();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| {
            eprintln!("starting the async runtime: {e}");
            std::process::exit(1);
        });
    runtime.block_on(async_main());
}

async fn async_main() {
    init_logging();
    let args = SchedulerArgs::parse();
    let run = async { quiver_executor::run_scheduler(args.try_into()?).await };
    if let Err(e) = run.await {
        eprintln!("quiver-scheduler: {e}");
        std::process::exit(1);
    }
}
