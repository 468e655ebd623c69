//! `quiver-scheduler`: Ballista's scheduler with every Quiver function and codec.

use clap::Parser;
use quiver_executor::cli::{SchedulerArgs, init_logging};

#[tokio::main]
async fn main() {
    init_logging();
    let args = SchedulerArgs::parse();
    let run = async { quiver_executor::run_scheduler(args.try_into()?).await };
    if let Err(e) = run.await {
        eprintln!("quiver-scheduler: {e}");
        std::process::exit(1);
    }
}
