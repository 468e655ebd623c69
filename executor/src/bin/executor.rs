//! `quiver-executor`: Ballista's executor with every Quiver function and codec.

use clap::Parser;
use quiver_executor::cli::{ExecutorArgs, init_logging};

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
    let args = ExecutorArgs::parse();
    let run = async { quiver_executor::run_executor(args.try_into()?).await };
    if let Err(e) = run.await {
        eprintln!("quiver-executor: {e}");
        std::process::exit(1);
    }
}
