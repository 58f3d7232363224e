//! The `botvisor` binary: parse the command line, initialise tracing, hand off to the library.

use std::collections::HashMap;
use std::process::ExitCode;

use botvisor::cli::{Cli, CliError, Command, run_admin, sandbox, serve};
use botvisor::settings::LogSettings;
use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // A panic message goes through tracing, masked, instead of straight to stderr: it could
    // hold a token (reqwest errors carry the request URL).
    std::panic::set_hook(Box::new(|info| {
        let text = botvisor::mask::redact(&info.to_string());
        if tracing::dispatcher::has_been_set() {
            tracing::error!(panic = %text, "panic");
        } else {
            eprintln!("{text}");
        }
    }));
    let env: HashMap<String, String> = std::env::vars().collect();
    let result: Result<(), CliError> = match &cli.command {
        Command::Serve => serve(&cli, &env).await,
        Command::Sandbox(args) => sandbox(args).await,
        _ => {
            // Admin commands log only warnings: their output is the result.
            botvisor::telemetry::init(&LogSettings {
                filter: "warn".into(),
                ..LogSettings::default()
            });
            let mut stdout = std::io::stdout();
            run_admin(&cli, &env, &mut stdout).await
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", e.message);
            ExitCode::from(e.code)
        }
    }
}
