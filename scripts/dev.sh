#!/usr/bin/env bash
# Runs a single-node Raftstream cluster: data in ./data, gRPC on
# 127.0.0.1:50051, HTTP on 127.0.0.1:8080, its peer listener on
# 127.0.0.1:50061.
set -euo pipefail
cd "$(dirname "$0")/.."
# Build tools only: the test tools come with scripts/test.sh.
scripts/setup.sh build
exec cargo run --release -p raftstream-node -- dev "$@"
