//! botvisor: one supervised process hosting many Telegram bots, each with its own database.
//!
//! Module map:
//! - [`tasks`]: named, tracked task spawning and shutdown;
//! - [`sandbox`]: a local Telegram Bot API emulator for tests, development and demos.

pub mod sandbox;
pub mod tasks;
