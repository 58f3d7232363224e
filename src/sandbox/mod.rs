//! Telegram Bot API emulator (see docs/sandbox.md). Filled in by the sandbox work.
