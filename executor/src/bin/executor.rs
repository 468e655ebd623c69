//! `quiver-executor`: Ballista's executor with every Quiver function and codec.

use clap::Parser;
use quiver_executor::cli::{ExecutorArgs, init_logging};

#[tokio::main]
async fn main() {
    init_logging();
    let args = ExecutorArgs::parse();
    let run = async { quiver_executor::run_executor(args.try_into()?).await };
    if let Err(e) = run.await {
        eprintln!("quiver-executor: {e}");
        std::process::exit(1);
    }
}
