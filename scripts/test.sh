#!/usr/bin/env bash
# The test command (README, CI): formatting, lints, then every test against the local
# PostgreSQL (started if it is down). Any failure exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."

PG_SECOND=1 scripts/pg-up.sh

cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
# The import rules of docs/architecture.md first: a layer violation fails fast.
cargo test --locked --test layers
cargo test --locked --all-targets --no-fail-fast
