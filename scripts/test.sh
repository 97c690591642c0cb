#!/usr/bin/env bash
# Usage: scripts/test.sh [CARGO TEST ARGS...]
#   e.g. scripts/test.sh order_is_committed -- --nocapture
#
# What CI runs (.ci/run): makes sure the services run (scripts/services.sh),
# then checks formatting, lints with warnings as errors, and runs every test
# target against the real PostgreSQL, RabbitMQ and Redis. The integration
# tests start their own aiosmtpd servers with /usr/bin/python3 and give
# themselves their own database and namespace, so they do not disturb the
# demo's data. Extra arguments go to `cargo test`, whose summary stays the
# last line of output.

set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

require_cargo
cargo fmt --version >/dev/null 2>&1 ||
  die "cargo fmt not found: add it with 'rustup component add rustfmt'"
cargo clippy --version >/dev/null 2>&1 ||
  die "cargo clippy not found: add it with 'rustup component add clippy'"
scripts/services.sh
export RUST_BACKTRACE=${RUST_BACKTRACE:-1}

run cargo fmt --all -- --check
run cargo clippy --all-targets -- -D warnings
# Last, and nothing printed after it: CI reads cargo test's closing line.
run cargo test --all-targets "$@"
