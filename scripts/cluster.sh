#!/usr/bin/env bash
# Runs a local 3-node cluster on loopback (gRPC 50051-50053, HTTP
# 8081-8083, peer listeners 50061-50063 with mutual TLS from dev
# certificates in ./data/cluster/certs, data in ./data/cluster/N) until
# Ctrl-C, then stops the nodes it started.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release -p raftstream-node
peers="1=127.0.0.1:50061,2=127.0.0.1:50062,3=127.0.0.1:50063"
certs=data/cluster/certs
[ -f "$certs/ca.pem" ] || target/release/raftstream-node certs --out "$certs" --nodes 1,2,3
pids=()
stop() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait; }
trap stop EXIT INT TERM
for id in 1 2 3; do
  target/release/raftstream-node run --node-id "$id" --peers "$peers" \
    --grpc-addr "127.0.0.1:5005$id" --http-addr "127.0.0.1:808$id" \
    --peer-addr "127.0.0.1:5006$id" --peer-tls-ca "$certs/ca.pem" \
    --peer-tls-cert "$certs/node-$id.pem" --peer-tls-key "$certs/node-$id.key" \
    --data-dir "data/cluster/$id" &
  pids+=($!)
done
for id in 1 2 3; do
  until curl -fsS "http://127.0.0.1:808$id/readyz" >/dev/null 2>&1; do sleep 0.2; done
done
echo "3-node cluster ready: gRPC 127.0.0.1:50051-50053, HTTP 127.0.0.1:8081-8083 (Ctrl-C stops it)"
wait
