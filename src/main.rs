//! The `botvisor` binary: parse the command line, initialise tracing, hand off to the library.

use std::collections::HashMap;
use std::process::ExitCode;

use botvisor::cli::{Cli, CliError, Command, panel, run_admin, sandbox, serve};
use botvisor::settings::LogSettings;
use clap::Parser;
use clap::error::ErrorKind;

/// jemalloc: it gives freed pages back to the system on time (its background threads), where
/// glibc's allocator keeps a process at its peak (`botvisor::memory`).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    botvisor::memory::start_background_release();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
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
        Command::Panel(args) => panel(&cli, args, &env).await,
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

/// Ends a run whose command line clap refused: help and version print as clap renders them
/// (exit 0); any other error is one line on stderr, exit code 2, like all bad input.
fn usage_error(e: &clap::Error) -> ExitCode {
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            eprintln!("error: a subcommand is missing; add --help to list them");
            ExitCode::from(2)
        }
        _ => {
            eprintln!("{}", one_line(&e.render().to_string()));
            ExitCode::from(2)
        }
    }
}

/// clap's multi-line error as one line: the usage and "for more information" lines dropped,
/// the rest (the error, a tip, the possible values) joined.
fn one_line(rendered: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    let mut lines = rendered.lines().map(str::trim);
    while let Some(line) = lines.next() {
        if line.starts_with("Usage:") {
            // Usage may continue on indented lines until a blank one.
            for rest in lines.by_ref() {
                if rest.is_empty() {
                    break;
                }
            }
            continue;
        }
        if line.is_empty() || line.starts_with("For more information") {
            continue;
        }
        parts.push(line);
    }
    botvisor::mask::redact(&parts.join(" "))
}
