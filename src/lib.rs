//! botvisor: one supervised process hosting many Telegram bots, each with its own database.
//!
//! Module map, in layer order (an import may only point down this list; `tests/layers.rs`
//! enforces it — see docs/architecture.md):
//! - edges: [`cli`] (clap + terminal rendering), [`app`] (`botvisor serve` wired together,
//!   signals, systemd notify), [`web`] (`botvisor panel`: the web admin panel and the HTTP
//!   API), [`sandbox`] (a local Telegram Bot API emulator);
//! - operators' rules: [`admin`] (validated writes shared by the CLI, the HTTP API and the web
//!   pages);
//! - control plane: [`control`] (the reconcile loop, its pure planner, slots, restart policy,
//!   bot states) — decides, never talks to Telegram;
//! - data plane: [`runtime`] (one hosted bot: provision, getMe, module jobs, the update intake,
//!   the unit of work);
//! - behaviour: [`modules`] (the `Module` trait, the registry, `core`, `history`);
//! - [`telegram`] (the shared client, the error classifier, the send interface) and
//!   [`content`] (manifest, texts, language codes, the hot-swapped snapshot);
//! - storage: [`panel`], [`botdb`], [`schema`] — all SQL lives in their `store.rs` files (and in
//!   each module's own `store.rs`);
//! - leaves: [`settings`], [`telemetry`], [`mask`], [`tasks`], [`token`], [`crypto`] (the
//!   master key, sealing secrets at rest), [`memory`] (the allocator's free pages back to the
//!   system).

pub mod admin;
pub mod app;
pub mod botdb;
pub mod cli;
pub mod content;
pub mod control;
pub mod crypto;
pub mod mask;
pub mod memory;
pub mod modules;
pub mod panel;
pub mod runtime;
pub mod sandbox;
pub mod schema;
pub mod settings;
pub mod tasks;
pub mod telegram;
pub mod telemetry;
pub mod token;
pub mod web;
