//! The long-running commands: `serve` and `sandbox`, with their signal handling.

use std::collections::HashMap;

use super::{Cli, CliError, SandboxArgs, error_line, load_settings};

/// Runs `botvisor sandbox` until SIGTERM/SIGINT.
pub async fn sandbox(args: &SandboxArgs) -> Result<(), CliError> {
    use tokio::signal::unix::{SignalKind, signal};
    crate::telemetry::init(&crate::settings::LogSettings::default());
    let sandbox = crate::sandbox::Sandbox::bind(crate::sandbox::SandboxConfig {
        listen: args.listen,
        accept_any_token: args.accept_any_token,
        enforce_rate_limits: args.rate_limits,
    })
    .await
    .map_err(|e| CliError::input(error_line(&e)))?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let signal_error =
        |e: std::io::Error| CliError::failure(format!("cannot install signal handlers: {e}"));
    let mut term = signal(SignalKind::terminate()).map_err(signal_error)?;
    let mut int = signal(SignalKind::interrupt()).map_err(signal_error)?;
    let run = sandbox.run(shutdown.clone());
    tokio::pin!(run);
    tokio::select! {
        r = &mut run => return r.map_err(|e| CliError::failure(error_line(&e))),
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    shutdown.cancel();
    run.await.map_err(|e| CliError::failure(error_line(&e)))
}

/// Runs `botvisor serve` until SIGTERM/SIGINT; returns the process exit code.
///
/// SIGHUP reloads every bot's configuration. Exit code 0 when every bot drained within the
/// shutdown deadline, 1 when some did not (they are named in the log), 2 on bad settings.
pub async fn serve(cli: &Cli, env: &HashMap<String, String>) -> Result<(), CliError> {
    use tokio::signal::unix::{SignalKind, signal};
    let settings = load_settings(cli, env)?;
    crate::telemetry::init(&settings.log);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let signal_error =
        |e: std::io::Error| CliError::failure(format!("cannot install signal handlers: {e}"));
    let mut term = signal(SignalKind::terminate()).map_err(signal_error)?;
    let mut int = signal(SignalKind::interrupt()).map_err(signal_error)?;
    let mut hup = signal(SignalKind::hangup()).map_err(signal_error)?;
    let running = settings.clone();
    // The start waits for an unreachable panel; a signal meanwhile ends it cleanly.
    let start = crate::app::Daemon::start(settings, shutdown.clone());
    tokio::pin!(start);
    let started = tokio::select! {
        r = &mut start => r,
        _ = term.recv() => { tracing::info!(signal = "SIGTERM", "shutdown requested"); shutdown.cancel(); start.await }
        _ = int.recv() => { tracing::info!(signal = "SIGINT", "shutdown requested"); shutdown.cancel(); start.await }
    };
    let (daemon, handles) = match started {
        Ok(started) => started,
        Err(crate::app::DaemonError::Cancelled) => return Ok(()),
        Err(e) => return Err(CliError::input(error_line(&e))),
    };
    let reload = handles.reload.clone();
    let notifier = crate::app::notify_systemd(
        handles.ready,
        handles.counts,
        handles.heartbeat,
        shutdown.clone(),
    );
    let stopper = shutdown.clone();
    let signals = async move {
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!(signal = "SIGTERM", "shutdown requested"); break; }
                _ = int.recv() => { tracing::info!(signal = "SIGINT", "shutdown requested"); break; }
                _ = hup.recv() => {
                    tracing::info!(signal = "SIGHUP", "re-reading settings and reloading every bot");
                    match load_settings(cli, env) {
                        Ok(new) if new != running => tracing::warn!(
                            "the settings file changed; bot texts and manifests are reloaded now, \
                             other settings take effect at the next restart"
                        ),
                        Ok(_) => {}
                        Err(e) => tracing::error!(error = %e.message, "the settings file is invalid; keeping the running settings"),
                    }
                    let _ = reload.try_send(());
                }
                () = stopper.cancelled() => break,
            }
        }
        stopper.cancel();
    };
    let (report, (), ()) = tokio::join!(daemon.run(), signals, notifier);
    let report = report.map_err(|e| CliError::failure(error_line(&e)))?;
    if report.clean() {
        Ok(())
    } else {
        Err(CliError::failure(format!(
            "shutdown deadline passed before these drained: {}",
            report.not_drained.join(", ")
        )))
    }
}

/// Runs `botvisor panel` (the web admin panel and HTTP API) until SIGTERM/SIGINT, then lets
/// requests in flight finish and exits 0.
pub async fn panel(
    cli: &Cli,
    args: &super::PanelArgs,
    env: &HashMap<String, String>,
) -> Result<(), CliError> {
    use tokio::signal::unix::{SignalKind, signal};
    let settings = load_settings(cli, env)?;
    crate::telemetry::init(&settings.log);
    let signal_error =
        |e: std::io::Error| CliError::failure(format!("cannot install signal handlers: {e}"));
    let mut term = signal(SignalKind::terminate()).map_err(signal_error)?;
    let mut int = signal(SignalKind::interrupt()).map_err(signal_error)?;
    let options = settings.panel_connect_options()?;
    let pool = crate::panel::connect(&options, crate::settings::PANEL_PROCESS_POOL).await?;
    let admin = crate::admin::Admin::new(pool.clone(), std::sync::Arc::new(settings.clone()));
    let server = crate::web::PanelServer::bind(admin, &settings, args.listen)
        .await
        .map_err(|e| CliError::input(error_line(&e)))?;
    let url = if settings.panel_http.public_base_url.is_empty() {
        format!("http://{}", server.local_addr())
    } else {
        settings.panel_http.public_base_url.clone()
    };
    tracing::info!(url = %url, "panel ready");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let stopper = shutdown.clone();
    let signals = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutdown requested"),
            _ = int.recv() => tracing::info!(signal = "SIGINT", "shutdown requested"),
            () = stopper.cancelled() => {}
        }
        stopper.cancel();
    };
    let run = async {
        let r = server.run(shutdown.clone()).await;
        shutdown.cancel();
        r
    };
    let (result, ()) = tokio::join!(run, signals);
    pool.close().await;
    result.map_err(|e| CliError::failure(error_line(&e)))
}
