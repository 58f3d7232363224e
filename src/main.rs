//! The `botvisor` binary: parse the command line, initialise tracing, hand off to the library.

use std::collections::HashMap;
use std::process::ExitCode;

use botvisor::cli::{Cli, run_admin};
use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let env: HashMap<String, String> = std::env::vars().collect();
    botvisor::telemetry::init(&Default::default());
    let mut stdout = std::io::stdout();
    match run_admin(&cli, &env, &mut stdout).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", e.message);
            ExitCode::from(e.code)
        }
    }
}
