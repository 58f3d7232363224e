//! `--instances N`: several `botvisor serve` processes sharing one panel (issue 16's figure).
//!
//! Registers `--bots` polling bots, starts N child daemons (names `bench-0`, …), then:
//! 1. waits until every bot runs and the shares settle; reports each instance's share
//!    (`bot_status` rows in `running`, by instance);
//! 2. steady state: `/start` to every bot in one chat, each answered; the sandbox's 409 count
//!    over this window is the "outside any hand-over" figure;
//! 3. kill -9 of `bench-1`, then `/start` to each of its bots at once: the time from the kill
//!    until each answers (max and p50), and until all of them are `running` elsewhere
//!    (ownership and start, without the reply);
//! 4. no update applied twice: every `/start` of both rounds got exactly one reply;
//! 5. the 409s from the kill until the end (the hand-over window).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::{Value, json};

use super::daemon::{self, Mode, Running};
use super::{Bot, Ctx, World, percentile, round, sorted};

/// Chat of the steady-state round.
const STEADY_CHAT: i64 = 700_001;
/// Chat of the round after the kill.
const KILL_CHAT: i64 = 700_002;

async fn running_by_instance(world: &World) -> anyhow::Result<BTreeMap<String, usize>> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT instance, count(*) FROM bot_status WHERE state = 'running' GROUP BY instance",
    )
    .fetch_all(&world.pool)
    .await?;
    Ok(rows.into_iter().map(|(i, n)| (i, n as usize)).collect())
}

fn conflicts(world: &World, bots: &[Bot]) -> u64 {
    let stats = world.sandbox.stats();
    bots.iter().map(|b| stats.conflicts(&b.token)).sum()
}

/// Replies (`sendMessage`) of `bot` in `chat`.
fn replies(world: &World, bot: &Bot, chat: i64) -> anyhow::Result<usize> {
    Ok(world
        .sandbox
        .sent(&bot.token, chat, 0)?
        .iter()
        .filter(|e| e.method == "sendMessage")
        .count())
}

/// Sends `/start` to each bot in `chat` and waits until each answered; returns each bot's
/// time from `since` until its reply was seen.
async fn round_trip(
    world: &World,
    bots: &[Bot],
    chat: i64,
    since: Instant,
    limit: Duration,
) -> anyhow::Result<Vec<f64>> {
    for b in bots {
        world.say(&b.token, chat, "/start")?;
    }
    let mut waiting: Vec<&Bot> = bots.iter().collect();
    let mut times = Vec::with_capacity(bots.len());
    let t0 = Instant::now();
    while !waiting.is_empty() {
        let mut still = Vec::new();
        for b in waiting {
            if replies(world, b, chat)? >= 1 {
                times.push(since.elapsed().as_secs_f64());
            } else {
                still.push(b);
            }
        }
        waiting = still;
        if t0.elapsed() > limit {
            bail!("{} bots did not answer within {limit:?}", waiting.len());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(times)
}

/// Seconds from `since` until every bot of `ids` is `running` on an instance other than
/// `victim` (ownership and start, without the reply).
async fn all_running_elsewhere(
    world: &World,
    ids: &[i64],
    victim: &str,
    since: Instant,
    limit: Duration,
) -> anyhow::Result<f64> {
    loop {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM bot_status \
             WHERE bot_id = ANY($1) AND state = 'running' AND instance <> $2",
        )
        .bind(ids)
        .bind(victim)
        .fetch_one(&world.pool)
        .await?;
        if n as usize == ids.len() {
            return Ok(since.elapsed().as_secs_f64());
        }
        if since.elapsed() > limit {
            bail!(
                "only {n} of {} bots running elsewhere after {limit:?}",
                ids.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs the mode; returns the figures as JSON (the table is printed by the caller).
pub async fn run(
    world: &World,
    bots: &[Bot],
    env: &std::collections::HashMap<String, String>,
    instances: u32,
    _ctx: &mut Ctx,
) -> anyhow::Result<Value> {
    let mut daemons: Vec<Running> = Vec::new();
    for i in 0..instances {
        let mut env = env.clone();
        env.insert(
            "BOTVISOR__SUPERVISOR__INSTANCE".into(),
            format!("bench-{i}"),
        );
        env.insert("BOTVISOR__TELEGRAM__POLL_TIMEOUT_SECS".into(), "10".into());
        daemons.push(Running::start(Mode::Process, &env).await?);
    }
    let n = bots.len();
    let t0 = Instant::now();
    let limit = Duration::from_secs(180 + n as u64 / 2);
    // 1. Every bot running and the shares settled (unchanged for 3 s).
    let mut last: Option<(BTreeMap<String, usize>, Instant)> = None;
    let shares = loop {
        for d in &mut daemons {
            d.check_alive()?;
        }
        let by = running_by_instance(world).await?;
        let total: usize = by.values().sum();
        if total == n && by.len() == instances as usize {
            match &last {
                Some((prev, since)) if *prev == by && since.elapsed() >= Duration::from_secs(3) => {
                    break by;
                }
                Some((prev, _)) if *prev == by => {}
                _ => last = Some((by.clone(), Instant::now())),
            }
        }
        if t0.elapsed() > limit {
            bail!("shares did not settle within {limit:?}: {by:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let settled_s = t0.elapsed().as_secs_f64();
    let conflicts_startup = conflicts(world, bots);
    eprintln!(
        "bench: {n} bots running on {instances} instances after {settled_s:.1} s: {shares:?}"
    );

    // 2. Steady state.
    let steady = round_trip(world, bots, STEADY_CHAT, Instant::now(), limit).await?;
    let conflicts_steady = conflicts(world, bots) - conflicts_startup;

    // 3. kill -9 one instance; its bots must answer again from the others.
    let victim = "bench-1";
    let victims: Vec<i64> = sqlx::query_scalar(
        "SELECT bot_id FROM bot_status WHERE state = 'running' AND instance = $1",
    )
    .bind(victim)
    .fetch_all(&world.pool)
    .await?;
    let victim_bots: Vec<Bot> = bots
        .iter()
        .filter(|b| victims.contains(&b.id))
        .cloned()
        .collect();
    let before_kill = conflicts(world, bots);
    let mut killed = daemons.remove(1);
    let killed_at = Instant::now();
    killed.kill()?;
    let (takeover, running_again) = tokio::join!(
        round_trip(world, &victim_bots, KILL_CHAT, killed_at, limit),
        all_running_elsewhere(world, &victims, victim, killed_at, limit),
    );
    let takeover = sorted(takeover?);
    let running_again = running_again?;
    let conflicts_kill = conflicts(world, bots) - before_kill;
    eprintln!(
        "bench: {} bots of {victim} answered again, last after {:.2} s",
        victim_bots.len(),
        takeover.last().copied().unwrap_or(0.0)
    );

    // 4. Every /start answered exactly once.
    let mut twice = 0;
    for b in bots {
        if replies(world, b, STEADY_CHAT)? != 1 {
            twice += 1;
        }
    }
    for b in &victim_bots {
        if replies(world, b, KILL_CHAT)? != 1 {
            twice += 1;
        }
    }
    for d in daemons {
        d.stop().await?;
    }
    drop(killed);
    let steady = sorted(steady);
    Ok(json!({
        "instances": instances,
        "bots": n,
        "shares": shares,
        "settled_s": round(settled_s, 1),
        "steady_reply_p50_s": percentile(&steady, 50.0).map(|v| round(v, 3)),
        "victim_bots": victim_bots.len(),
        "takeover_p50_s": percentile(&takeover, 50.0).map(|v| round(v, 2)),
        "takeover_max_s": takeover.last().map(|v| round(*v, 2)),
        "takeover_all_running_s": round(running_again, 2),
        "updates_not_answered_exactly_once": twice,
        "conflicts_at_startup": conflicts_startup,
        "conflicts_steady": conflicts_steady,
        "conflicts_after_kill": conflicts_kill,
        "log": daemon::log_path().display().to_string(),
    }))
}
