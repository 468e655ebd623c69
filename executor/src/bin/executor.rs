//! `quiver-executor`: Ballista's executor with every Quiver function and codec.

use clap::Parser;
use quiver_executor::cli::{ExecutorArgs, init_logging};

fn main() {
    quiver_executor::cli::run_main(async_main());
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
