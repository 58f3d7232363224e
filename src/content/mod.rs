//! A bot's content: its manifest, its texts, language codes and the hot-swapped snapshot.
//!
//! Below every layer that acts (runtime, modules, control, admin) and above only the leaves:
//! nothing here talks to a database or to Telegram.

pub mod lang;
pub mod manifest;
pub mod snapshot;
pub mod texts;
