#!/usr/bin/env bash
# End-to-end load comparison, one run: the same upstream reached directly, through nginx
# proxy_pass, through HAProxy verifying ES256 JWTs, and through Portcullis with full
# enforcement (ES256 token, route + scope check, credential injection, access log to a file).
# Uses ../shared/bench (peers.sh, mkjwt.py, compare.sh). Everything listens on 127.0.0.1.
#
# Then, because req/s on a shared 2-core VM swings with whatever else runs, it measures the
# steadier figure: CPU time each proxy process spends per request under the same load, including
# a bare pingora proxy (examples/pingora_floor.rs), the floor any pingora-based gateway starts from.
#
# usage: scripts/bench-load.sh [ROUNDS] [SECONDS]     (default 3 rounds of 6 s per target)
#
# BENCH_POLICY=1 puts one condition and one rate limit on the current build's benchmarked route.
# BENCH_MONITOR=1 turns every anomaly detector on (BASELINE_BIN=the same binary then measures
# the cost of monitoring alone: the baseline run uses the config without it).
# BASELINE_BIN=/path/to/an/older/portcullis also runs that build, with the same config, in the
# same CPU-per-request rounds ("portcullis baseline"), for before/after figures of a change
# (BASELINE_PLAIN=1: the baseline gets the plain route, for builds older than BENCH_POLICY's
# and BENCH_MONITOR's features).
# Every line gives the ratio to the same round's bare pingora; medians close the run.
# BENCH_THREADS=N runs every pingora-based proxy (the floor and the gateways) with N workers
# (work stealing, as `listen.threads` > 1 does); the run ends with the gateway's error and
# warning lines about pooled upstream connections, if any.
# BENCH_STATE=shared also runs the current build with `state.backend: shared` (a private
# redis-server and PostgreSQL on loopback, started here) in the same rounds ("portcullis
# shared"), with the rate limit of BENCH_POLICY on both gateways (it is set for you): every call
# then takes its rate from Redis. Redis's own CPU for those calls is printed beside it.
# BENCH_TRACING=1 also runs the current build with OpenTelemetry tracing on at 1% sampling
# (`tracing.sample_ratio`, or BENCH_TRACING_RATIO), exporting over OTLP/HTTP to a local sink
# (scripts/otlp-sink.py), in the same rounds ("portcullis traced"): its difference from
# "portcullis" is the cost of tracing.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_build_deps
kit=${BENCH_KIT:-../shared/bench}
[ -d "$kit" ] || { echo "benchmark kit not found at $kit (set BENCH_KIT)" >&2; exit 1; }
for tool in nginx haproxy wrk bc; do
  command -v "$tool" >/dev/null 2>&1 || { echo "needs nginx haproxy wrk bc (Debian: apt-get install -y nginx haproxy wrk bc)" >&2; exit 1; }
done
python3 -c 'import cryptography' 2>/dev/null || { echo "needs python3-cryptography (pip install cryptography)" >&2; exit 1; }

rounds=${1:-3} secs=${2:-6}
D=/tmp/peerbench
cargo build --release --bin portcullis
# Separately: with an example in the same build, dev-dependency features would be unified into
# the gateway binary, and it would no longer be the binary `scripts/run.sh` builds.
cargo build --release --example pingora_floor
"$kit/peers.sh" start
work=$(mktemp -d)
cleanup() {
  for p in ${gw:-} ${floor:-} ${base:-} ${shared:-} ${redis:-} ${traced:-} ${sink:-}; do kill "$p" 2>/dev/null || true; done
  [ -n "${pg:-}" ] && kill -INT "$pg" 2>/dev/null && wait "$pg" 2>/dev/null || true
  "$kit/peers.sh" stop; rm -rf "$work"
}
trap cleanup EXIT

# BENCH_POLICY=1: the current build's route also carries one condition and one rate limit
# (the baseline build, which may predate them, keeps the plain route).
[ -n "${BENCH_STATE:-}" ] && BENCH_POLICY=1
route_extra="${BENCH_POLICY:+$BENCH_POLICY_YAML}"
if [ -n "${BENCH_MONITOR:-}" ]; then
  route_extra="${route_extra:+$route_extra
}$BENCH_MONITOR_ROUTE_YAML"
fi
bench_gateway_config 9080 9981 "$work/access.log" "$route_extra" "${BENCH_MONITOR:+$BENCH_MONITOR_YAML}" > "$work/gateway.yaml"
./target/release/portcullis run -c "$work/gateway.yaml" 2>"$work/gateway.err" &
gw=$!
for _ in $(seq 100); do curl -sf http://127.0.0.1:9981/readyz >/dev/null && break; sleep 0.1; done
token=$(python3 "$kit/mkjwt.py" "$D" token bench-agent "read:tickets" 3000)
code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" http://127.0.0.1:9080/api/tickets)
[ "$code" = 200 ] || { echo "gateway answered $code to the bench token" >&2; cat "$work/gateway.err" >&2; exit 1; }
"$kit/compare.sh" http://127.0.0.1:9080/api/tickets "$token" "$rounds" "$secs"
echo "access-log lines written: $(wc -l < "$work/access.log")"

# CPU per request: process CPU (utime+stime of every thread, from /proc) over one wrk run,
# divided by the requests wrk completed. Same load as above: 1 wrk thread, 32 connections.
./target/release/examples/pingora_floor 127.0.0.1:9085 127.0.0.1:9001 "${BENCH_THREADS:-1}" 2>"$work/floor.err" &
floor=$!
if [ -n "${BASELINE_BIN:-}" ]; then
  # The current build's configuration, unless BASELINE_PLAIN=1 (a build from before the policy
  # or monitoring features then gets the plain route).
  if [ -n "${BASELINE_PLAIN:-}" ]; then
    bench_gateway_config 9180 9982 "$work/access-baseline.log" > "$work/baseline.yaml"
  else
    bench_gateway_config 9180 9982 "$work/access-baseline.log" "$route_extra" "${BENCH_MONITOR:+$BENCH_MONITOR_YAML}" > "$work/baseline.yaml"
  fi
  "$BASELINE_BIN" run -c "$work/baseline.yaml" 2>"$work/baseline.err" &
  base=$!
  for _ in $(seq 100); do curl -sf http://127.0.0.1:9982/readyz >/dev/null && break; sleep 0.1; done
fi
if [ -n "${BENCH_STATE:-}" ]; then
  # Private servers for the shared backend (PostgreSQL refuses to run as root: as `postgres`).
  pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  as_pg=(); [ "$(id -u)" -eq 0 ] && as_pg=(runuser -u postgres --) && chown postgres "$work"
  "${as_pg[@]}" "$pgbin/initdb" -U postgres --auth=trust --no-sync -D "$work/pg" >/dev/null
  "${as_pg[@]}" "$pgbin/postgres" -D "$work/pg" -p 5499 -k "$work" -c listen_addresses=127.0.0.1 2>"$work/pg.err" &
  pg=$!
  redis-server --port 6399 --bind 127.0.0.1 --save "" --appendonly no >/dev/null &
  redis=$!
  for _ in $(seq 100); do "$pgbin/pg_isready" -q -h 127.0.0.1 -p 5499 && break; sleep 0.1; done
  bench_gateway_config 9280 9983 "$work/access-shared.log" "$route_extra" "state:
  backend: shared
  postgres: {url: \"postgres://postgres@127.0.0.1:5499/postgres\"}
  redis: {url: \"redis://127.0.0.1:6399/\"}" > "$work/shared.yaml"
  ./target/release/portcullis run -c "$work/shared.yaml" 2>"$work/shared.err" &
  shared=$!
  for _ in $(seq 100); do curl -sf http://127.0.0.1:9983/readyz >/dev/null && break; sleep 0.1; done
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" http://127.0.0.1:9280/api/tickets)
  [ "$code" = 200 ] || { echo "shared gateway answered $code" >&2; cat "$work/shared.err" >&2; exit 1; }
fi
if [ -n "${BENCH_TRACING:-}" ]; then
  python3 scripts/otlp-sink.py 4399 &
  sink=$!
  bench_gateway_config 9380 9984 "$work/access-traced.log" "$route_extra" "${BENCH_MONITOR:+$BENCH_MONITOR_YAML
}tracing:
  endpoint: http://127.0.0.1:4399
  sample_ratio: ${BENCH_TRACING_RATIO:-0.01}" > "$work/traced.yaml"
  ./target/release/portcullis run -c "$work/traced.yaml" 2>"$work/traced.err" &
  traced=$!
  for _ in $(seq 100); do curl -sf http://127.0.0.1:9984/readyz >/dev/null && break; sleep 0.1; done
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" http://127.0.0.1:9380/api/tickets)
  [ "$code" = 200 ] || { echo "traced gateway answered $code" >&2; cat "$work/traced.err" >&2; exit 1; }
fi
sleep 0.5
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
declare -A results=()
floor_now=""
cpu_per_request() { # NAME PID URL
  local t0 t1 out n us ratio=""
  t0=$(ticks "$2")
  out=$(wrk -t1 -c32 -d"${secs}s" -H "Authorization: Bearer $token" "$3")
  t1=$(ticks "$2")
  n=$(awk '/requests in/ {print $1}' <<<"$out")
  last_n=$n
  us=$(echo "($t1 - $t0) * 1000000 / $hz / $n" | bc -l)
  # This round's bare pingora is the floor the gateways are compared with.
  if [ "$1" = "bare pingora" ]; then floor_now=$us; fi
  if [ -n "$floor_now" ]; then
    ratio=$(echo "$us / $floor_now" | bc -l)
    results["$1"]+="$us:$ratio "
    ratio=$(printf '  %.2f× floor' "$ratio")
  fi
  printf '%-22s %8.0f req/s  %6.1f CPU µs per request%s\n' "$1" \
    "$(awk '/Requests\/sec/ {print $2}' <<<"$out")" "$us" "$ratio"
}
# Medians over the rounds: CPU µs per request and the ratio to the same round's floor.
summary() {
  echo "medians of $rounds rounds (CPU µs per request, ratio to the floor of the same round):"
  for name in "bare pingora" "portcullis" "portcullis baseline" "portcullis traced" "portcullis shared"; do
    [ -n "${results[$name]:-}" ] || continue
    printf '%-22s %6.1f µs  %.2f×\n' "$name" \
      "$(tr ' ' '\n' <<<"${results[$name]}" | grep . | cut -d: -f1 | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}')" \
      "$(tr ' ' '\n' <<<"${results[$name]}" | grep . | cut -d: -f2 | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}')"
  done
}
echo "CPU per request (one worker each):"
for r in $(seq "$rounds"); do
  cpu_per_request "nginx proxy_pass" "$(pgrep -P "$(cat "$D/px.pid")")" http://127.0.0.1:9002/api/tickets
  cpu_per_request "haproxy jwt_verify" "$(cat "$D/ha.pid")" http://127.0.0.1:9003/api/tickets
  cpu_per_request "bare pingora" "$floor" http://127.0.0.1:9085/api/tickets
  cpu_per_request "portcullis" "$gw" http://127.0.0.1:9080/api/tickets
  if [ -n "${base:-}" ]; then
    cpu_per_request "portcullis baseline" "$base" http://127.0.0.1:9180/api/tickets
  fi
  if [ -n "${traced:-}" ]; then
    cpu_per_request "portcullis traced" "$traced" http://127.0.0.1:9380/api/tickets
  fi
  if [ -n "${shared:-}" ]; then
    r0=$(ticks "$redis")
    cpu_per_request "portcullis shared" "$shared" http://127.0.0.1:9280/api/tickets
    r1=$(ticks "$redis")
    printf '%-22s %8s        %6.1f CPU µs per request (the calls above)\n' "  redis-server" "" \
      "$(echo "($r1 - $r0) * 1000000 / $hz / $last_n" | bc -l)"
  fi
done
summary
if [ -n "${traced:-}" ]; then
  curl -s http://127.0.0.1:9984/metrics | grep '^portcullis_trace_spans_total' || true
fi
echo "gateway log lines about upstream connections (errors/warnings): $(grep -ciE '(error|warn).*(upstream|pool|connection)' "$work/gateway.err" || true)"
grep -iE '(error|warn).*(upstream|pool|connection)' "$work/gateway.err" | cut -c1-300 | sort | uniq -c | sort -rn | head -5 || true
echo "gateway RSS after the run: $(ps -o rss= -p "$gw" | awk '{printf "%.1f MiB", $1/1024}')"
