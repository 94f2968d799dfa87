//! The `eventsd` binary: tracing, configuration, bind, run. Everything else is in the library.

use std::process::ExitCode;

use clap::Parser;
use eventsd::config::{Cli, Command};
use eventsd::{run, shutdown_signal, Listeners};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    limit_malloc_arenas();
    match tokio::runtime::Runtime::new() {
        Ok(runtime) => {
            let code = runtime.block_on(serve_or_run_command());
            // `run` stops everything it started before it returns; what may still run is an
            // open of the store that a shutdown during start-up left behind, which is as safe
            // to cut short as a crash.
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            code
        }
        Err(e) => {
            eprintln!("eventsd: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// glibc gives every thread that allocates an arena of its own (up to 8 per core) and hands
/// little of it back, so after a burst of publishes across the runtime's, the writer's, the
/// sync and index threads and sled's, the server held about twice the memory it used (RSS right
/// after filling 200,000 events: 861 MiB with the default, 486 MiB with two arenas). Two
/// arenas keep that waste small; the threads rarely allocate at the same moment.
fn limit_malloc_arenas() {
    // SAFETY: mallopt only sets a tunable of the allocator, and runs before any other thread
    // exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

async fn serve_or_run_command() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Serve(cli.serve)) {
        Command::Serve(config) => serve(config).await,
        Command::Check(args) => check(&args.data_dir),
        Command::Migrate(args) => migrate(&args),
        Command::Reindex(args) => reindex(&args),
        Command::Tail(args) => eventsd::client::tail(args).await.map_err(|e| e.to_string()),
        Command::Publish(args) => eventsd::client::publish(args).await.map_err(|e| e.to_string()),
        Command::Get(args) => eventsd::client::get(args).await.map_err(|e| e.to_string()),
        Command::List(args) => eventsd::client::list(args).await.map_err(|e| e.to_string()),
        Command::Endpoints(command) => {
            eventsd::client::endpoints(command).await.map_err(|e| e.to_string())
        }
        Command::Deliveries(command) => {
            eventsd::client::deliveries(command).await.map_err(|e| e.to_string())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("eventsd: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: eventsd::ServeConfig) -> Result<(), String> {
    // Signals first: once the ports accept connections, a SIGTERM is a clean shutdown.
    let shutdown = shutdown_signal();
    let grpc = TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let http = TcpListener::bind(config.http_listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.http_listen))?;
    run(config, Listeners { grpc, http }, shutdown).await.map_err(|e| e.to_string())
}

fn check(dir: &std::path::Path) -> Result<(), String> {
    let report = eventsd::store::check::check(dir).map_err(|e| e.to_string())?;
    let range = report.range.map_or("none".to_string(), |(a, b)| format!("{a}..={b}"));
    let acked = report.acked.map_or("none".to_string(), |a| a.to_string());
    println!(
        "{}: {} events, sequences {range}, acknowledged up to {acked}",
        dir.display(),
        report.events
    );
    for note in &report.notes {
        println!("note: {note}");
    }
    for problem in &report.problems {
        println!("problem: {problem}");
    }
    if report.is_ok() {
        println!("ok");
        Ok(())
    } else {
        Err(format!("{} problem(s) found", report.problem_count))
    }
}

/// The index cache of a maintenance run.
const TOOL_CACHE_BYTES: u64 = 64 * 1024 * 1024;

fn migrate(args: &eventsd::config::CheckArgs) -> Result<(), String> {
    let dir = &args.data_dir;
    let report = eventsd::store::embedded::migrate(dir, TOOL_CACHE_BYTES, args.segment_bytes)
        .map_err(|e| e.to_string())?;
    let (first, last) = report.range;
    let done = if report.already { "already migrated" } else { "migrated" };
    println!("{}: {done}: {} events, sequences {first}..={last}", dir.display(), report.events);
    Ok(())
}

fn reindex(args: &eventsd::config::CheckArgs) -> Result<(), String> {
    let dir = &args.data_dir;
    let report = eventsd::store::embedded::reindex(dir, TOOL_CACHE_BYTES, args.segment_bytes)
        .map_err(|e| e.to_string())?;
    let (first, last) = report.range;
    println!(
        "{}: index rebuilt: {} events, sequences {first}..={last}",
        dir.display(),
        report.events
    );
    Ok(())
}
