#!/usr/bin/env bash
# Runs the whole test suite: unit tests, openraft's storage suite and the
# multi-node integration tests on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo test --workspace --all-targets
cargo test --workspace --doc
