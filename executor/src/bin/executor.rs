//! `quiver-executor`: Ballista's executor with every Quiver function and codec.

use clap::Parser;
use quiver_executor::cli::{ExecutorArgs, init_logging};

#[tokio::main]
async fn main() {
    init_logging();
    let args = ExecutorArgs::parse();
    if let Err(e) = quiver_executor::run_executor(args.into()).await {
        eprintln!("quiver-executor: {e}");
        std::process::exit(1);
    }
}
