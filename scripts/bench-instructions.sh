#!/usr/bin/env bash
# Instructions per request, counted by callgrind: repeatable to a few instructions for the same
# binary and load, whatever else the machine is doing, so a change of well under 1 µs shows up
# where CPU-time figures on a shared 2-core VM drown it in noise.
#
# Each binary (the current release build, bare pingora, and BASELINE_BIN if set) runs under
# callgrind with the bench-load.sh configuration. After a warm-up, counters are zeroed, N
# keep-alive requests are sent over 8 connections, and the process-wide instruction count
# (every thread: workers, access-log writer, admin) is divided by N.
#
# usage: scripts/bench-instructions.sh [N]     (default 3000 requests)
# Each line also gives heap allocations per request (scripts/callgrind-allocs.py: calls into
# the allocator's entry points, from the same callgrind run).
# KEEP_PROFILES=DIR keeps the callgrind files (callgrind_annotate DIR/portcullis.cg.* shows where).
# BENCH_TRACING=1 also measures the current build with `tracing:` on (exporting to
# scripts/otlp-sink.py) at sample ratio 0 and 1, and prints the cost per call at 1%
# (ratio 0's cost + 1% of the difference a sampled call makes), which sampling noise in a
# run of a few thousand calls would otherwise drown.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_build_deps
kit=${BENCH_KIT:-../shared/bench}
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install -y valgrind)" >&2; exit 1; }
python3 -c 'import cryptography' 2>/dev/null || { echo "needs python3-cryptography" >&2; exit 1; }
n=${1:-3000}
D=/tmp/peerbench
cargo build --release --bin portcullis
cargo build --release --example pingora_floor
"$kit/peers.sh" start
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  "$kit/peers.sh" stop
  if [ -n "${KEEP_PROFILES:-}" ]; then mkdir -p "$KEEP_PROFILES" && cp "$work"/*.cg.* "$KEEP_PROFILES"/; fi
  rm -rf "$work"
}
trap cleanup EXIT

token=$(python3 "$kit/mkjwt.py" "$D" token bench-agent "read:tickets" 3000)

# Send COUNT keep-alive GETs over 8 connections; fail on any non-200.
load() { # PORT COUNT
  python3 - "$1" "$2" "$token" <<'PY'
import http.client, sys, threading
port, count, token = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
def run(k):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for _ in range(k):
        c.request("GET", "/api/tickets", headers={"Authorization": "Bearer " + token})
        r = c.getresponse(); r.read()
        if r.status != 200: raise SystemExit(f"status {r.status}")
ts = [threading.Thread(target=run, args=(count // 8,)) for _ in range(8)]
[t.start() for t in ts]; [t.join() for t in ts]
PY
}

measure() { # NAME PORT CMD...
  local name=$1 port=$2; shift 2
  local out="$work/$name.cg"
  valgrind --tool=callgrind --callgrind-out-file="$out" "$@" 2>"$work/$name.vg" &
  local pid=$!; pids+=("$pid")
  for _ in $(seq 600); do
    curl -s -o /dev/null -H "Authorization: Bearer $token" "http://127.0.0.1:$port/api/tickets" && break
    sleep 0.2
  done
  load "$port" 400
  callgrind_control -z "$pid" >/dev/null
  load "$port" "$n"
  callgrind_control -d "$pid" >/dev/null
  sleep 1
  local total
  total=$(cat "$out".* 2>/dev/null | awk '/^summary:/ {s += $2} END {print s}')
  last=$(echo "$total / $n" | bc -l)
  printf '%-22s %10.0f instructions per request, %s heap allocations\n' "$name" "$last" \
    "$(python3 scripts/callgrind-allocs.py "$n" "$out".*)"
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

# BENCH_MONITOR=1: every anomaly detector on for the current build (see scripts/lib.sh);
# BENCH_POLICY=1: one condition and one rate limit on the benchmarked route.
route_extra="${BENCH_POLICY:+$BENCH_POLICY_YAML}"
if [ -n "${BENCH_MONITOR:-}" ]; then
  route_extra="${route_extra:+$route_extra
}$BENCH_MONITOR_ROUTE_YAML"
fi
bench_gateway_config 9080 9981 "$work/access.log" "$route_extra" "${BENCH_MONITOR:+$BENCH_MONITOR_YAML}" > "$work/gateway.yaml"
echo "callgrind, $n requests each, one worker:"
measure "bare pingora" 9085 ./target/release/examples/pingora_floor 127.0.0.1:9085 127.0.0.1:9001
measure portcullis 9080 ./target/release/portcullis run -c "$work/gateway.yaml"
plain=$last
if [ -n "${BENCH_TRACING:-}" ]; then
  python3 scripts/otlp-sink.py 4399 &
  pids+=("$!")
  for ratio in 0 1; do
    bench_gateway_config 9380 9984 "$work/access-traced.log" "$route_extra" "${BENCH_MONITOR:+$BENCH_MONITOR_YAML
}tracing:
  endpoint: http://127.0.0.1:4399
  export_interval: 200ms
  sample_ratio: $ratio" > "$work/traced.yaml"
    measure "portcullis traced $ratio" 9380 ./target/release/portcullis run -c "$work/traced.yaml"
    eval "traced_$ratio=\$last"
  done
  printf '%-22s %10.0f instructions per request (unsampled: %+.0f; a sampled call: %+.0f)\n' \
    "  tracing at 1%" "$(echo "$traced_0 + 0.01 * ($traced_1 - $traced_0) - $plain" | bc -l)" \
    "$(echo "$traced_0 - $plain" | bc -l)" "$(echo "$traced_1 - $plain" | bc -l)"
fi
if [ -n "${BASELINE_BIN:-}" ]; then
  # The same configuration as the current build (so BENCH_POLICY/BENCH_MONITOR need a
  # baseline that knows them).
  bench_gateway_config 9180 9982 "$work/access-baseline.log" "$route_extra" "${BENCH_MONITOR:+$BENCH_MONITOR_YAML}" > "$work/baseline.yaml"
  measure "portcullis baseline" 9180 "$BASELINE_BIN" run -c "$work/baseline.yaml"
fi
