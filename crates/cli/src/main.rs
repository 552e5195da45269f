//! `metal-marlin`: run low-bit LLMs from the command line.
//! stdout carries only results; logs, progress and timings go to stderr.

mod alloc;
mod args;
mod commands;
mod load;
mod npy;

use clap::Parser;

fn main() {
    alloc::tune();
    let cli = args::Cli::parse();
    let filter = match (&cli.command, cli.verbose) {
        (_, true) => "debug",
        // The server logs one line per request and its lifecycle.
        (args::Command::Serve(_), false) => "warn,mm_server=info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("METAL_MARLIN_LOG")
                .unwrap_or_else(|_| filter.into()),
        )
        .init();
    if let Some(n) = cli.threads {
        if let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
        {
            eprintln!("metal-marlin: cannot set {n} threads: {e}");
        }
    }
    if let Err(e) = commands::run(cli.command) {
        eprintln!("metal-marlin: error: {e:#}");
        std::process::exit(1);
    }
}
