#!/usr/bin/env bash
# Raftstream versus NATS JetStream, side by side on loopback, in one run.
#
#   benches/compare.sh [--quick] [--keep-logs DIR] [SECTION...]
#
# Sections (all by default, in this order):
#   compare   3 nodes / 3 replicas and 1 node / 1 replica: 1 KiB and 100 B
#             pipelined throughput, one-at-a-time latency, catch-up consume;
#             Raftstream (fsync per commit) against JetStream with its default
#             lazy sync and with its store on a filesystem mounted -o sync
#   iggy      single node, 1 replica, 1 KiB, 8 producers, batches of 1,000
#   failover  kill a partition leader under load (3 nodes)
#   rolling   restart every node in turn (SIGTERM, then the same command)
#             under load, 3 partitions x 3 replicas: the longest any
#             partition took no publish
#   scale     3 nodes with 10, 100 and 1,000 partitions: idle CPU and RSS per
#             node, throughput over all partitions
#
# --quick shrinks every workload (for trying the script, not for figures).
# --keep-logs DIR (absolute, or relative to the repository root) copies each
# Raftstream node's log (warnings and errors) into DIR as N-node-ID.log,
# N counting the clusters started, before the cluster's data is deleted,
# and each loadgen run's standard error as loadgen-LABEL.err.
# Builds release binaries, installs nats-server from Debian when missing,
# binds everything to 127.0.0.1, and on exit (also on failure or Ctrl-C)
# stops only the processes it started, unmounts what it mounted and removes
# its temporary directory. Writes benches/RESULTS.md and prints the table.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

# As given, for the report (the loop below consumes "$@").
command_line="$*"
quick=""
keep_logs=""
sections=()
while [ $# -gt 0 ]; do
  arg=$1
  shift
  case "$arg" in
    --quick) quick=yes ;;
    --keep-logs)
      [ $# -gt 0 ] || { echo "--keep-logs needs a directory" >&2; exit 2; }
      keep_logs=$(mkdir -p "$1" && cd "$1" && pwd)
      shift
      ;;
    compare | iggy | failover | rolling | scale) sections+=("$arg") ;;
    -h | --help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "unknown argument $arg (see --help)" >&2; exit 2 ;;
  esac
done
every_section=(compare iggy failover rolling scale)
[ ${#sections[@]} -gt 0 ] || sections=("${every_section[@]}")
want() { local s; for s in "${sections[@]}"; do [ "$s" = "$1" ] && return 0; done; return 1; }

scripts/setup.sh
if ! command -v nats-server >/dev/null 2>&1; then
  echo "compare: installing nats-server from Debian" >&2
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq nats-server >/dev/null
fi
command -v mkfs.ext4 >/dev/null 2>&1 || { echo "compare: mkfs.ext4 (e2fsprogs) is needed for the -o sync store" >&2; exit 1; }

echo "compare: building release binaries" >&2
cargo build --release -q -p raftstream-node -p raftstream-benches --bin raftstream-node --bin loadgen
node_bin=$root/target/release/raftstream-node
loadgen=$root/target/release/loadgen

work=$(mktemp -d /tmp/raftstream-compare.XXXXXX)
# The commit measured, taken before this run writes its results into the tree.
commit="$(git -C "$root" rev-parse --short HEAD)$(git -C "$root" diff --quiet HEAD -- . 2>/dev/null || echo '+dirty')"
results=$work/results.jsonl
: >"$results"
pids=()
# Data directories of the clusters started since the last end_section.
data_dirs=()
mounted=""
token="rst_compare-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"

stop_all() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  pids=()
}
# Stops the clusters and deletes their data, so that one section's gigabytes
# do not sit in the page cache and on the disk under the next section.
section_runs=0
end_section() {
  stop_all
  section_runs=$((section_runs + 1))
  if [ -n "$keep_logs" ]; then
    local dir
    for dir in "${data_dirs[@]}"; do
      if [ -f "$dir.log" ]; then cp "$dir.log" "$keep_logs/$section_runs-node-$(basename "$dir").log"; fi
    done
  fi
  [ ${#data_dirs[@]} -eq 0 ] || rm -rf "${data_dirs[@]}"
  data_dirs=()
}
cleanup() {
  stop_all
  if [ -n "$mounted" ]; then umount "$mounted" 2>/dev/null || umount -l "$mounted" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Polls $1 (a URL) until it answers, bounded at 60 s.
wait_http() {
  local i
  for i in $(seq 300); do
    curl -sf "$1" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "compare: $1 did not come up" >&2
  return 1
}

# --- Raftstream --------------------------------------------------------------
rs_grpc=()
rs_http=()
rs_pids=()
rs_peer=()
rs_peers=""
rs_dir=""
# start_raftstream N: an N-node cluster with fresh data directories.
start_raftstream() {
  local n=$1 id
  rs_grpc=() rs_http=() rs_pids=() rs_peer=() rs_peers=""
  for id in $(seq "$n"); do
    rs_grpc+=("127.0.0.1:$(free_port)")
    rs_http+=("127.0.0.1:$(free_port)")
    rs_peer+=("127.0.0.1:$(free_port)")
  done
  # Peer links are plain loopback, like JetStream's routes here.
  for id in $(seq "$n"); do rs_peers+="${rs_peers:+,}$id=${rs_peer[$((id - 1))]}"; done
  rs_dir=$(mktemp -d "$work/raftstream.XXXX")
  for id in $(seq "$n"); do
    start_raftstream_node "$id"
    data_dirs+=("$rs_dir/$id")
  done
  for id in $(seq "$n"); do wait_http "http://${rs_http[$((id - 1))]}/readyz"; done
}
# start_raftstream_node ID: starts node ID of the cluster start_raftstream
# set up, on its ports and data directory (also to restart it).
start_raftstream_node() {
  local id=$1
  RAFTSTREAM_ADMIN_TOKEN="$token" RUST_LOG=warn,openraft::core::heartbeat=error "$node_bin" run --node-id "$id" --peers "$rs_peers" \
    --grpc-addr "${rs_grpc[$((id - 1))]}" --http-addr "${rs_http[$((id - 1))]}" \
    --peer-addr "${rs_peer[$((id - 1))]}" \
    --data-dir "$rs_dir/$id" >>"$rs_dir/$id.log" 2>&1 &
  pids+=($!)
  rs_pids[$((id - 1))]=$!
}
# restart_raftstream_node ID: stops node ID gracefully (SIGTERM: it hands
# off its leaderships first) and starts it again once it exited, then
# waits until it is ready.
restart_raftstream_node() {
  local id=$1 pid=${rs_pids[$((id - 1))]}
  kill -TERM "$pid"
  wait "$pid" || echo "compare: node $id exited with status $? on SIGTERM" >&2
  start_raftstream_node "$id"
  wait_http "http://${rs_http[$((id - 1))]}/readyz"
}

# --- NATS JetStream ----------------------------------------------------------
nats_urls=""
# start_nats N STORE_ROOT: an N-node JetStream cluster storing under STORE_ROOT.
start_nats() {
  local n=$1 store=$2 id routes="" client cluster monitor conf
  data_dirs+=("$store")
  local -a clients=() clusters=() monitors=()
  for id in $(seq "$n"); do
    clients+=("$(free_port)")
    clusters+=("$(free_port)")
    monitors+=("$(free_port)")
  done
  for id in $(seq "$n"); do routes+="${routes:+, }nats-route://127.0.0.1:${clusters[$((id - 1))]}"; done
  nats_urls=""
  for id in $(seq "$n"); do
    client=${clients[$((id - 1))]} cluster=${clusters[$((id - 1))]} monitor=${monitors[$((id - 1))]}
    conf=$(mktemp "$work/nats-XXXX.conf")
    {
      echo "server_name: n$id"
      echo "listen: 127.0.0.1:$client"
      echo "http: 127.0.0.1:$monitor"
      echo "jetstream { store_dir: \"$store/n$id\" }"
      if [ "$n" -gt 1 ]; then
        echo "cluster { name: bench, listen: 127.0.0.1:$cluster, routes: [ $routes ] }"
      fi
    } >"$conf"
    nats-server -c "$conf" >"$conf.log" 2>&1 &
    pids+=($!)
    nats_urls+="${nats_urls:+,}nats://127.0.0.1:$client"
  done
  for id in $(seq "$n"); do wait_http "http://127.0.0.1:${monitors[$((id - 1))]}/healthz"; done
}

# run LABEL ARGS...: one loadgen run whose JSON result is kept under LABEL.
# A failed run is recorded as failed (with the end of its error) and the
# comparison goes on; the table shows it, and the script exits non-zero.
failures=0
run() {
  local label=$1
  shift
  echo "compare: $label: loadgen $*" >&2
  # Write back what earlier runs left dirty in the page cache, so that their
  # writeback is not charged to this run's fsyncs.
  sync
  local out status=0
  out=$(RAFTSTREAM_TOKEN="$token" "$loadgen" --json "$@" 2>"$work/run.err") || status=$?
  if [ -n "$keep_logs" ]; then cp "$work/run.err" "$keep_logs/loadgen-${label//\//-}.err"; fi
  if [ "$status" -ne 0 ]; then
    echo "compare: $label failed:" >&2
    grep -v '^ *[0-9]*: \|^ *at ' "$work/run.err" | head -n 5 >&2
    python3 -c 'import json, sys; print(json.dumps({"label": sys.argv[1], "failed": True, "error": open(sys.argv[2]).read().split("Stack backtrace")[0].strip()[-500:]}))' \
      "$label" "$work/run.err" >>"$results"
    failures=$((failures + 1))
    return 0
  fi
  printf '%s\n' "$out" | python3 -c 'import json, sys; r = json.loads(sys.stdin.read()); r["label"] = sys.argv[1]; print(json.dumps(r))' "$label" >>"$results"
}

# Shapes of the workloads, identical for both systems.
if [ -n "$quick" ]; then
  n_1k=20000 n_100=30000 secs_sync=3 secs_lat=3 n_iggy=50000 secs_fo=6 kill_at=2 secs_scale=3 idle_secs=3 settle_secs=20
  secs_roll=20 roll_pause=2
else
  n_1k=200000 n_100=400000 secs_sync=10 secs_lat=10 n_iggy=1000000 secs_fo=10 kill_at=4 secs_scale=10 idle_secs=10 settle_secs=90
  secs_roll=45 roll_pause=5
fi
pipelined=(--producers 4 --partitions 4 --batch-size 1000 --in-flight 5 --linger-ms 5)
latency=(--one-at-a-time --producers 1 --partitions 1 --message-size 1024 --duration-secs "$secs_lat")

# workloads SYSTEM_TAG SYSTEM ADDR REPLICAS [--duration-secs S]: the four comparison workloads.
workloads() {
  local tag=$1 system=$2 addr=$3 replicas=$4
  shift 4
  local n1k=(--messages "$n_1k") n100=(--messages "$n_100")
  if [ $# -gt 0 ]; then n1k=("$@") n100=("$@"); fi
  run "$tag/1k" --system "$system" --addr "$addr" --replicas "$replicas" "${pipelined[@]}" --message-size 1024 "${n1k[@]}"
  run "$tag/100b" --system "$system" --addr "$addr" --replicas "$replicas" "${pipelined[@]}" --message-size 100 "${n100[@]}"
  run "$tag/latency" --system "$system" --addr "$addr" --replicas "$replicas" "${latency[@]}"
}

# The disk's fsync rate: what the publish path can at most do with one fsync per commit.
python3 - "$work" >"$work/disk.json" <<'PY'
import json, os, sys, time
path = os.path.join(sys.argv[1], "fsync-probe")
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
n, start = 0, time.monotonic()
while time.monotonic() - start < 3:
    os.write(fd, b"x" * 1024)
    os.fsync(fd)
    n += 1
os.close(fd)
rate = n / (time.monotonic() - start)
# Sequential bandwidth with one fsync at the end: 64 MiB in 1 MiB writes.
chunk, total = b"y" * (1 << 20), 64
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
start = time.monotonic()
for _ in range(total):
    os.write(fd, chunk)
os.fsync(fd)
mb_per_sec = total * 1.048576 / (time.monotonic() - start)
os.close(fd)
os.unlink(path)
print(json.dumps({"fsyncs_per_sec": rate, "write_mb_per_sec": mb_per_sec}))
PY
echo "compare: disk: $(cat "$work/disk.json")" >&2

if want compare; then
  for nodes in 3 1; do
    replicas=$nodes
    start_raftstream "$nodes"
    addrs=$(IFS=,; echo "${rs_grpc[*]}")
    workloads "raftstream/$nodes" raftstream "$addrs" "$replicas"
    run "raftstream-http/$nodes/1k" --system http --addr "${rs_http[0]}" --replicas "$replicas" \
      --producers 4 --partitions 4 --batch-size 100 --in-flight 4 --message-size 1024 --messages $((n_1k / 4))
    end_section

    start_nats "$nodes" "$work/nats-lazy-$nodes"
    workloads "nats-lazy/$nodes" nats "$nats_urls" "$replicas"
    end_section

    # Every write forced to disk: the store on an ext4 image mounted -o sync.
    img=$work/sync-$nodes.img
    mnt=$work/sync-$nodes
    truncate -s 4G "$img"
    mkfs.ext4 -q -F "$img"
    mkdir -p "$mnt"
    mount -o loop,sync "$img" "$mnt"
    mounted=$mnt
    start_nats "$nodes" "$mnt"
    workloads "nats-sync/$nodes" nats "$nats_urls" "$replicas" --duration-secs "$secs_sync"
    stop_all
    umount "$mnt"
    mounted=""
    rm -f "$img"
    end_section # after the unmount, so that it removes an empty mount point
  done
fi

if want iggy; then
  start_raftstream 1
  run "iggy/raftstream" --system raftstream --addr "${rs_grpc[0]}" --replicas 1 --producers 8 \
    --partitions 8 --batch-size 1000 --in-flight 5 --linger-ms 5 --message-size 1024 --messages "$n_iggy"
  end_section
fi

if want failover; then
  start_raftstream 3
  addrs=$(IFS=,; echo "${rs_grpc[*]}")
  node_pids=""
  for id in 1 2 3; do node_pids+="${node_pids:+,}$id=${rs_pids[$((id - 1))]}"; done
  run "failover/raftstream" --system raftstream --addr "$addrs" --replicas 3 --partitions 1 --producers 2 \
    --batch-size 100 --in-flight 5 --linger-ms 1 --message-size 1024 --duration-secs "$secs_fo" \
    --kill-leader-after-secs "$kill_at" --node-pids "$node_pids"
  end_section
fi

if want rolling; then
  # The failover run's load, over three partitions on three replicas, while
  # every node is restarted in turn; loadgen reports the longest gap
  # between two acknowledgements of one partition (one producer) and
  # verifies that every acknowledged message was read back exactly once.
  start_raftstream 3
  addrs=$(IFS=,; echo "${rs_grpc[*]}")
  run "rolling/raftstream" --system raftstream --addr "$addrs" --replicas 3 --partitions 3 --producers 1 \
    --batch-size 100 --in-flight 5 --linger-ms 1 --message-size 1024 --duration-secs "$secs_roll" &
  loadgen_job=$!
  sleep "$roll_pause"
  for id in 1 2 3; do
    restart_raftstream_node "$id"
    sleep "$roll_pause"
  done
  if ! kill -0 "$loadgen_job" 2>/dev/null; then
    echo "compare: rolling: the load ended before the last restart; raise secs_roll" >&2
  fi
  wait "$loadgen_job" || true
  # run recorded a failure in the results from its subshell; count it here.
  if grep -qF '{"label": "rolling/raftstream", "failed": true' "$results"; then
    failures=$((failures + 1))
  fi
  end_section
fi

if want scale; then
  for parts in 10 100 1000; do
    start_raftstream 3
    addrs=$(IFS=,; echo "${rs_grpc[*]}")
    if [ "$parts" -le 250 ]; then topics=1 per=$parts; else topics=$((parts / 250)) per=250; fi
    if ! "$loadgen" --addr "$addrs" --token "$token" --topic "scale$parts" --topics "$topics" \
      --partitions "$per" --replicas 3 --setup-only 2>"$work/run.err"; then
      echo "compare: scale/$parts: creating the topics failed" >&2
      python3 -c 'import json, sys; print(json.dumps({"label": sys.argv[1], "failed": True, "error": open(sys.argv[2]).read().split("Stack backtrace")[0].strip()[-500:]}))' \
        "scale/$parts" "$work/run.err" >>"$results"
      failures=$((failures + 1))
      end_section
      continue
    fi
    # Idle: CPU time (utime + stime) and RSS of every node over idle_secs,
    # once every partition's leader reports its group quiesced (elected,
    # leadership handed to the preferred replica, idle for 2 s), waiting at
    # most settle_secs; the time that took is reported as well.
    settle_started=$(date +%s.%N)
    settled=true
    "$loadgen" --addr "$addrs" --token "$token" --topic "scale$parts" --topics "$topics" \
      --partitions "$per" --replicas 3 --setup-only --await-quiesced-secs "$settle_secs" 2>>"$work/run.err" || settled=false
    settle_secs_taken=$(python3 -c "import sys, time; print(round(time.time() - float(sys.argv[1]), 1))" "$settle_started")
    python3 - "$idle_secs" "$parts" "$settled" "$settle_secs_taken" "${rs_pids[@]}" >>"$work/scale.jsonl" <<'PY'
import json, os, sys, time
secs, parts, settled, settle_secs, pids = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "true", float(sys.argv[4]), sys.argv[5:]
tick = os.sysconf("SC_CLK_TCK")
def cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / tick
def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
before = {p: cpu(p) for p in pids}
time.sleep(secs)
idle = [100 * (cpu(p) - before[p]) / secs for p in pids]
print(json.dumps({"partitions": parts, "idle_cpu_pct": idle, "settled": settled,
                  "settle_secs": settle_secs, "rss_mib": [rss_mib(p) for p in pids]}))
PY
    if [ "$topics" -gt 1 ]; then topic_args=(--topic "scale$parts" --topics "$topics"); else topic_args=(--topic "scale$parts"); fi
    run "scale/$parts" --system raftstream --addr "$addrs" "${topic_args[@]}" --partitions "$per" --replicas 3 \
      --producers 4 --batch-size 1000 --in-flight 5 --linger-ms 5 --message-size 1024 --duration-secs "$secs_scale"
    end_section
  done
fi

# The raw figures of a full run are kept next to RESULTS.md.
if [ ${#sections[@]} -eq ${#every_section[@]} ] && [ -z "$quick" ]; then
  mkdir -p "$root/benches/results"
  cp "$results" "$work/disk.json" "$root/benches/results/"
  [ -f "$work/scale.jsonl" ] && cp "$work/scale.jsonl" "$root/benches/results/"
fi

# Only a run of every section replaces benches/RESULTS.md; a partial run
# writes its table next to the results in the temporary directory and prints it.
out=$root/benches/RESULTS.md
[ ${#sections[@]} -eq ${#every_section[@]} ] && [ -z "$quick" ] || out=$work/RESULTS.md
nats_version=$(nats-server --version 2>&1 | head -n1)
rustc_version=$(rustc --version)
python3 "$root/benches/report.py" \
  --results "$results" --scale "$work/scale.jsonl" --disk "$work/disk.json" \
  --command "benches/compare.sh $command_line" --nats-version "$nats_version" --rustc-version "$rustc_version" \
  --commit "$commit" \
  --out "$out"
cat "$out"
echo "compare: wrote $out" >&2
if [ "$failures" -gt 0 ]; then
  echo "compare: $failures run(s) failed (see the table)" >&2
  exit 1
fi
