#!/usr/bin/env bash
# The cost of MCP enforcement: one `tools/call` (get_ticket {"id":7}, stateless revision,
# JSON answers) sent with wrk straight to the example MCP server (examples/mcp_server.rs), and
# through Portcullis with an agent token on a `kind: mcp` route whose `mcp:` rule allows
# get_ticket (the gateway reads the JSON-RPC body, checks the tool against its rules and the
# token's scopes, forwards, and logs the call to a file). A second gateway process, same
# binary and settings but with a plain HTTP route (`kind: http`, no `mcp:`), proxies the same
# call too: the difference between the two gateways is what MCP enforcement itself costs.
#
# req/s on a shared 2-core VM swings with whatever else runs, so the figure that matters is
# CPU time per call: utime+stime of each process (all its threads, from /proc/PID/stat) over
# one wrk run, divided by the requests wrk completed. Rounds alternate direct, gateway (MCP
# route), gateway (HTTP route), direct, ...; medians are reported.
#
# usage: scripts/bench-mcp.sh [ROUNDS] [SECONDS]     (default 3 rounds of 6 s per target)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_build_deps
ensure_packages "for the MCP benchmark" wrk:wrk bc:bc curl:curl python3:python3

rounds=${1:-3} secs=${2:-6}
cargo build --release --bin portcullis
# Separately: with an example in the same build, dev-dependency features (rmcp's) would be
# unified into the gateway binary, and it would no longer be the binary `scripts/run.sh` builds.
cargo build --release --example mcp_server

work=$(mktemp -d)
cleanup() {
  for p in ${gw:-} ${plain:-} ${srv:-}; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

read -r mcp_port gw_port admin_port plain_port plain_admin < <(python3 -c 'import socket
ss = [socket.socket() for _ in range(5)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')

# The benchmarked gateways: one worker each (like bench-load.sh), our own ES256 token service,
# one route to the MCP server, access log to a file. KIND mcp: the route allows one tool,
# get_ticket; KIND http: it is plain HTTP (the same call proxied without looking inside).
./target/release/portcullis keygen --out "$work/signing-key.pem" >/dev/null
# gateway_config PROXY_PORT ADMIN_PORT ACCESS_LOG KIND
gateway_config() {
  cat <<YAML
listen:
  proxy: ["127.0.0.1:$1"]
  admin: 127.0.0.1:$2
  threads: 1
server:
  watch_config: false
issuers:
  - name: local
    issuer: https://portcullis.local
    audiences: [portcullis]
    algorithms: [ES256]
    signing_key_file: signing-key.pem
token_service:
  issuer: local
  default_ttl: 1h
agents:
  - id: bench-agent
    owner: bench@example.com
    scopes: [tickets:read]
upstreams:
  - name: tickets-mcp
    url: http://127.0.0.1:$mcp_port
    kind: $4
routes:
  - name: tickets-mcp
    methods: [POST]
    path: /mcp
    upstream: tickets-mcp
    scopes: [tickets:read]
YAML
  if [ "$4" = mcp ]; then
    printf '    mcp:\n      tools:\n        - name: get_ticket\n'
  fi
  printf 'access_log:\n  path: %s\n' "$3"
}
gateway_config "$gw_port" "$admin_port" "$work/access.log" mcp > "$work/gateway.yaml"
gateway_config "$plain_port" "$plain_admin" "$work/access-http.log" http > "$work/plain.yaml"

./target/release/examples/mcp_server --quiet --listen "127.0.0.1:$mcp_port" 2>"$work/server.err" &
srv=$!
./target/release/portcullis run -c "$work/gateway.yaml" 2>"$work/gateway.err" &
gw=$!
./target/release/portcullis run -c "$work/plain.yaml" 2>"$work/plain.err" &
plain=$!
for port in "$admin_port" "$plain_admin"; do
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
done
token=$(./target/release/portcullis token issue -c "$work/gateway.yaml" --agent bench-agent --scopes tickets:read)

# The call, as wrk sends it: stateless revision (no session; protocol version and method in
# headers and _meta). The response() hook counts answers that are not the ticket (a JSON-RPC
# error is HTTP 200, so wrk's own non-2xx count would not see it).
body='{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_ticket","arguments":{"id":7},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}'
cat > "$work/call.lua" <<LUA
wrk.method = "POST"
wrk.body = '$body'
wrk.headers["content-type"] = "application/json"
wrk.headers["accept"] = "application/json, text/event-stream"
wrk.headers["mcp-protocol-version"] = "2026-07-28"
wrk.headers["mcp-method"] = "tools/call"
wrk.headers["mcp-name"] = "get_ticket"
wrk.headers["authorization"] = "Bearer $token"

local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) wrong = 0 end
function response(status, headers, body)
  if status ~= 200 or not string.find(body, "ticket #7:", 1, true) then wrong = wrong + 1 end
end
function done(summary, latency, requests)
  local n = 0
  for _, t in ipairs(threads) do n = n + t:get("wrong") end
  io.write(string.format("wrong answers: %d\n", n))
end
LUA

direct=http://127.0.0.1:$mcp_port/mcp
gateway=http://127.0.0.1:$gw_port/mcp
http_route=http://127.0.0.1:$plain_port/mcp
for url in "$direct" "$gateway" "$http_route"; do
  answer=$(curl -s "$url" -H 'content-type: application/json' -H 'accept: application/json, text/event-stream' \
    -H 'mcp-protocol-version: 2026-07-28' -H 'mcp-method: tools/call' -H 'mcp-name: get_ticket' \
    -H "authorization: Bearer $token" -d "$body")
  grep -q 'ticket #7:' <<<"$answer" || {
    echo "$url did not answer the call: $answer" >&2; cat "$work/gateway.err" "$work/plain.err" >&2; exit 1
  }
done

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
per_call() { echo "scale=1; ($2 - $1) * 1000000 / $hz / $3" | bc -l; }
# One wrk run at URL through gateway process GW_PID (- for none); appends
# "req/s gateway_µs server_µs" to FILE and prints them.
run() { # NAME GW_PID URL FILE
  local g0=0 g1=0 s0 s1 out n rps wrong g
  [ "$2" = - ] || g0=$(ticks "$2")
  s0=$(ticks "$srv")
  out=$(wrk -t1 -c32 -d"${secs}s" -s "$work/call.lua" "$3")
  [ "$2" = - ] || g1=$(ticks "$2")
  s1=$(ticks "$srv")
  n=$(awk '/requests in/ {print $1}' <<<"$out")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  wrong=$(awk '/wrong answers/ {print $3}' <<<"$out")
  if [ "${wrong:-x}" != 0 ] || grep -q 'Non-2xx\|Socket errors' <<<"$out"; then
    echo "$out" >&2; echo "$1: some calls did not get the ticket" >&2; exit 1
  fi
  g=$(per_call "$g0" "$g1" "$n")
  printf '%s %s %s\n' "$rps" "$g" "$(per_call "$s0" "$s1" "$n")" >>"$4"
  [ "$2" = - ] && g="     -" || g=$(printf '%6.1f' "$g")
  printf '  %-22s %7.0f req/s   gateway %s   MCP server %6.1f   CPU µs per call\n' "$1" \
    "$rps" "$g" "$(per_call "$s0" "$s1" "$n")"
}
median() { # FILE COLUMN
  awk -v c="$2" '{print $c}' "$1" | sort -n | awk '{v[NR] = $1} END {
    if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# Warm every path (connections, allocator, caches) before measuring.
for url in "$direct" "$gateway" "$http_route"; do
  wrk -t1 -c32 -d1s -s "$work/call.lua" "$url" >/dev/null
done
echo "tools/call get_ticket, stateless JSON; wrk 1 thread, 32 connections, ${secs}s per run; gateways: 1 worker"
for r in $(seq "$rounds"); do
  echo "round $r:"
  run direct - "$direct" "$work/direct"
  run "gateway, MCP route" "$gw" "$gateway" "$work/gateway"
  run "gateway, HTTP route" "$plain" "$http_route" "$work/plain"
done
decisions() { python3 -c 'import collections, json, sys
c = collections.Counter(json.loads(l).get("decision") for l in open(sys.argv[1]))
print(", ".join(f"{k} {v}" for k, v in c.most_common()))' "$1"; }
echo
echo "medians of $rounds rounds (CPU µs per tools/call):"
printf '  %-22s %7.0f req/s   gateway      -   MCP server %6.1f\n' direct \
  "$(median "$work/direct" 1)" "$(median "$work/direct" 3)"
printf '  %-22s %7.0f req/s   gateway %6.1f   MCP server %6.1f\n' "gateway, MCP route" \
  "$(median "$work/gateway" 1)" "$(median "$work/gateway" 2)" "$(median "$work/gateway" 3)"
printf '  %-22s %7.0f req/s   gateway %6.1f   MCP server %6.1f\n' "gateway, HTTP route" \
  "$(median "$work/plain" 1)" "$(median "$work/plain" 2)" "$(median "$work/plain" 3)"
paste -d' ' "$work/gateway" "$work/plain" | awk '{print $2 - $5}' > "$work/diff"
printf 'MCP enforcement (MCP route minus HTTP route, per round): median %.1f CPU µs per tools/call\n' \
  "$(median "$work/diff" 1)"
echo "access log, MCP route: $(decisions "$work/access.log")"
echo "gateway RSS after the run: $(ps -o rss= -p "$gw" | awk '{printf "%.1f MiB", $1/1024}')"
