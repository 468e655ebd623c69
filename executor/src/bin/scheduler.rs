//! `quiver-scheduler`: Ballista's scheduler with every Quiver function and codec.

use clap::Parser;
use quiver_executor::cli::{SchedulerArgs, init_logging};

fn main() {
    quiver_executor::cli::run_main(async_main());
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
