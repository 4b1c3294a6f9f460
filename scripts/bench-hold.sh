#!/usr/bin/env bash
# Approvals under load, one run: hold HELD calls (default 10,000) for approval on real
# connections and measure, in the same run, ordinary allowed traffic (wrk) with nothing held and
# with all of them held; the gateway's memory per held call; approve → upstream latency.
# The bench itself is benches/hold.rs (it starts the release gateway and an upstream on
# 127.0.0.1 and prints a markdown table). Target: ordinary traffic keeps >= 90% of its throughput.
#
# usage: scripts/bench-hold.sh [HELD] [SECONDS] [ROUNDS]   (default 10000 held, 10 s wrk runs, 3 rounds)
# env:   HOLD_THREADS HOLD_SAMPLE HOLD_OPEN_CONCURRENCY HOLD_WRK_CONNECTIONS HOLD_TIMEOUT_SECS HOLD_RUST_LOG
#        HOLD_BODY_BYTES HOLD_SETTLE_SECS (see benches/hold.rs)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_build_deps
command -v wrk >/dev/null 2>&1 || { echo "needs wrk (Debian: apt-get install -y wrk)" >&2; exit 1; }

held=${1:-10000} secs=${2:-10} rounds=${3:-3}
# Every held call is an open socket in the bench and another in the gateway (which inherits this).
want=65536
hard=$(ulimit -Hn)
if [ "$hard" = unlimited ] || [ "$hard" -ge "$want" ]; then ulimit -n "$want"; else ulimit -n "$hard"; fi
need=$((held + 1024))
if [ "$(ulimit -n)" -lt "$need" ]; then
  echo "open-file limit is $(ulimit -n) (hard $hard); holding $held needs about $need: raise the hard limit or hold fewer" >&2
  exit 1
fi

start=$SECONDS
cargo build --release --bin portcullis
cargo bench --bench hold -- "$held" "$secs" "$rounds"
echo "whole run (build included): $((SECONDS - start)) s"
