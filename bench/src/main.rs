//! `eventsd-bench`: the load generator of eventsd.
//!
//! It spawns the `eventsd` binary (or uses `--addr`), drives it over gRPC in bounded runs and
//! prints one table per scenario, plus JSON lines with `--json`. The scenarios live one group
//! per module; [`bench`] runs them in order and owns the servers they share.

mod bench;
mod cli;
mod client;
mod error;
mod fanout;
mod load;
mod memory;
mod metrics;
mod outbound;
mod payload;
mod probe;
mod publish;
mod reads;
mod redis;
mod report;
mod server;
mod startup;

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    // Dropping the run on ctrl-c drops its servers, and their guards kill the processes.
    let outcome = tokio::select! {
        outcome = bench::run(cli) => outcome,
        _ = tokio::signal::ctrl_c() => Err("interrupted; spawned servers were stopped".into()),
    };
    match outcome {
        Ok(bench::Verdict::AllRan) => ExitCode::SUCCESS,
        Ok(bench::Verdict::SomeFailed) => {
            eprintln!("eventsd-bench: some scenarios failed (see above)");
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("eventsd-bench: {err}");
            ExitCode::FAILURE
        }
    }
}
