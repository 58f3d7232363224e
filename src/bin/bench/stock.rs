//! `--daemon stock`: the reference instead of botvisor — a stock teloxide multi-bot
//! host with no database (`src/bin/stock_host.rs`), measured by the same traffic phases on
//! the same machine, so `daemon_cpu_us_per_update` of the two can be compared directly.

use std::time::{Duration, Instant};

use anyhow::Context;

use crate::daemon::Running;
use crate::{Bot, Ctx, World};

/// Starts the stock host with every bot of `bots` and waits until each one polls.
pub async fn start(
    ctx: &mut Ctx,
    world: &World,
    bots: &[Bot],
    api_url: &str,
) -> anyhow::Result<()> {
    let tokens: Vec<&str> = bots.iter().map(|b| b.token.as_str()).collect();
    let before = world.sandbox.stats();
    let t0 = Instant::now();
    let d = ctx.daemon.insert(Running::stock(api_url, &tokens)?);
    let limit = Duration::from_secs(60 + bots.len() as u64 / 10);
    world
        .wait_called(&tokens, "getUpdates", &before, d, t0 + limit)
        .await
        .context("the stock host")?;
    eprintln!(
        "bench: stock teloxide host, {} bots polling after {:.1} s",
        bots.len(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
