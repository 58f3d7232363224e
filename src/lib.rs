//! botvisor: one supervised process hosting many Telegram bots, each with its own database.
//!
//! Module map:
//! - [`cli`]: the command line (daemon, sandbox, admin commands);
//! - [`config`]: typed settings (file + `BOTVISOR__*` environment), validated;
//! - [`telemetry`]: tracing setup and secret masking;
//! - [`migration_lint`]: the additive-only lint over migration SQL files;
//! - [`migration_guard`]: the checksum list that keeps shipped migrations immutable;
//! - [`tasks`]: named, tracked task spawning and shutdown;
//! - [`token`]: validated, masked bot tokens;
//! - [`manifest`] and [`texts`]: a bot's configuration and its user-facing strings;
//! - [`migrations`]: the embedded panel and bot schemas, applied and inspected;
//! - [`panel`]: the panel database (all its SQL in `panel::store`);
//! - [`botdb`]: per-bot databases (naming, provisioning, connection budget, all bot SQL);
//! - [`supervisor`]: the reconcile loop and each bot's restart policy;
//! - [`bot`]: one hosted bot's run: durable listener, dispatcher, settings snapshot;
//! - [`modules`]: what a bot does with an update (commands, menus, users, history);
//! - [`daemon`]: `botvisor serve` wired together, with ordered shutdown;
//! - [`sandbox`]: a local Telegram Bot API emulator for tests, development and demos.

pub mod bot;
pub mod botdb;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod manifest;
pub mod migration_guard;
pub mod migration_lint;
pub mod migrations;
pub mod modules;
pub mod panel;
pub mod sandbox;
pub mod supervisor;
pub mod tasks;
pub mod telemetry;
pub mod texts;
pub mod token;
