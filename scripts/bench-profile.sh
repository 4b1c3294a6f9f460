#!/usr/bin/env bash
# Differential profile: where bare pingora (examples/pingora_floor.rs) and Portcullis with full
# enforcement (ES256, route + scope, one condition, one rate limit, every detector on, credential
# injection, access log to a file) spend their CPU under the same wrk load. Sampling with
# `perf record -e cpu-clock` (the software clock: this VM exposes no hardware counters), self
# time per symbol, one worker each; the top symbols of both are printed side by side in
# percent of the process's samples and in µs per request.
#
# Unlike callgrind (scripts/bench-instructions.sh), this runs the real CPU: SHA-256 here uses
# the SHA-NI instructions that valgrind does not emulate (callgrind counts ~20,000 software
# SHA-256 instructions per request for the token-cache key that cost ~1% here).
#
# usage: scripts/bench-profile.sh [SECONDS] [TOP]     (default 10 s each, top 30 symbols)
# OUT=DIR keeps the perf.data files and the full reports.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_build_deps
ensure_packages "to sample the CPU" perf:linux-perf wrk:wrk
kit=${BENCH_KIT:-../shared/bench}
secs=${1:-10} top=${2:-30}
D=/tmp/peerbench
cargo build --release --bin portcullis
cargo build --release --example pingora_floor
"$kit/peers.sh" start
work=$(mktemp -d)
out=${OUT:-$work}
mkdir -p "$out"
cleanup() {
  for p in ${gw:-} ${floor:-}; do kill "$p" 2>/dev/null || true; done
  "$kit/peers.sh" stop
  rm -rf "$work"
}
trap cleanup EXIT

bench_gateway_config 9080 9981 "$work/access.log" "$BENCH_POLICY_YAML
$BENCH_MONITOR_ROUTE_YAML" "$BENCH_MONITOR_YAML" > "$work/gateway.yaml"
./target/release/portcullis run -c "$work/gateway.yaml" 2>"$work/gateway.err" &
gw=$!
./target/release/examples/pingora_floor 127.0.0.1:9085 127.0.0.1:9001 2>"$work/floor.err" &
floor=$!
for _ in $(seq 100); do curl -sf http://127.0.0.1:9981/readyz >/dev/null && break; sleep 0.1; done
token=$(python3 "$kit/mkjwt.py" "$D" token bench-agent "read:tickets" 3000)
code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" http://127.0.0.1:9080/api/tickets)
[ "$code" = 200 ] || { echo "gateway answered $code" >&2; cat "$work/gateway.err" >&2; exit 1; }

profile() { # NAME PID URL
  local data="$out/$1.perf.data" n
  wrk -t1 -c32 -d2s -H "Authorization: Bearer $token" "$3" >/dev/null # warm-up
  perf record -q -e cpu-clock -F 4999 -p "$2" -o "$data" -- sleep "$secs" 2>/dev/null &
  local rec=$!
  n=$(wrk -t1 -c32 -d"${secs}s" -H "Authorization: Bearer $token" "$3" | awk '/requests in/ {print $1}')
  wait "$rec" || true
  perf report -i "$data" --no-children --sort symbol --stdio 2>/dev/null \
    | awk -v n="$n" -v secs="$secs" '
        /^# Samples:/ { s = $3; sub(/K$/, "000", s); samples = s }
        /^ +[0-9.]+%/ { pct = $1; sub(/%/, "", pct); $1 = ""; $2 = "";
                        printf "%6.2f%%  %6.2f µs  %s\n", pct, pct / 100 * samples / 4999 * 1e6 / n, $0 }' \
    > "$out/$1.top"
  echo "$n" > "$out/$1.requests"
}
profile floor "$floor" http://127.0.0.1:9085/api/tickets
profile portcullis "$gw" http://127.0.0.1:9080/api/tickets
for name in floor portcullis; do
  echo "== $name: $(cat "$out/$name.requests") requests in ${secs}s; top $top symbols (self time; µs per request)"
  head -n "$top" "$out/$name.top"
done
