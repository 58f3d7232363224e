//! botvisor: one supervised process hosting many Telegram bots, each with its own database.
//!
//! Module map:
//! - [`migration_lint`]: the additive-only lint over migration SQL files;
//! - [`migration_guard`]: the checksum list that keeps shipped migrations immutable;
//! - [`tasks`]: named, tracked task spawning and shutdown;
//! - [`sandbox`]: a local Telegram Bot API emulator for tests, development and demos.

pub mod migration_guard;
pub mod migration_lint;
pub mod sandbox;
pub mod tasks;
