#!/usr/bin/env bash
# End-to-end load comparison, one run: the same upstream reached directly, through nginx
# proxy_pass, through HAProxy verifying ES256 JWTs, and through Portcullis with full
# enforcement (ES256 token, route + scope check, credential injection, access log to a file).
# Uses ../shared/bench (peers.sh, mkjwt.py, compare.sh). Everything listens on 127.0.0.1.
#
# usage: scripts/bench-load.sh [ROUNDS] [SECONDS]     (default 3 rounds of 6 s per target)
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
"$kit/peers.sh" start
work=$(mktemp -d)
cleanup() { [ -n "${gw:-}" ] && kill "$gw" 2>/dev/null; "$kit/peers.sh" stop; rm -rf "$work"; }
trap cleanup EXIT

cat > "$work/gateway.yaml" <<YAML
listen:
  proxy: ["127.0.0.1:9080"]
  admin: 127.0.0.1:9981
  threads: 1                 # one worker, like each peer
server:
  watch_config: false
issuers:
  - name: bench-idp
    issuer: https://idp.example.test
    audiences: [tools-gateway]
    algorithms: [ES256]
    jwks_file: $D/jwks.json
agents:
  - id: bench-agent
    owner: bench@example.com
    scopes: [read:tickets]
upstreams:
  - name: up
    url: http://127.0.0.1:9001
    credential: {header: x-api-key, value: "bench-secret"}
routes:
  - name: tickets
    methods: [GET]
    path: /api/tickets/**
    upstream: up
    scopes: [read:tickets]
access_log:
  path: $work/access.log
YAML
./target/release/portcullis run -c "$work/gateway.yaml" 2>"$work/gateway.err" &
gw=$!
for _ in $(seq 100); do curl -sf http://127.0.0.1:9981/readyz >/dev/null && break; sleep 0.1; done
token=$(python3 "$kit/mkjwt.py" "$D" token bench-agent "read:tickets" 3000)
code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" http://127.0.0.1:9080/api/tickets)
[ "$code" = 200 ] || { echo "gateway answered $code to the bench token" >&2; cat "$work/gateway.err" >&2; exit 1; }
"$kit/compare.sh" http://127.0.0.1:9080/api/tickets "$token" "$rounds" "$secs"
echo "access-log lines written: $(wc -l < "$work/access.log")"
echo "gateway RSS after the run: $(ps -o rss= -p "$gw" | awk '{printf "%.1f MiB", $1/1024}')"
