#!/usr/bin/env bash
# MCP through Portcullis, one command: builds the gateway and the example MCP server
# (examples/mcp_server.rs), starts both on free loopback ports in a temporary directory with
# examples/mcp/gateway.yaml, mints two agent tokens, and shows with plain curl:
#   (a) tools/list straight from the server (every tool) and through the gateway (filtered);
#   (b) a tool no rule allows, called anyway: a JSON-RPC error, nothing runs;
#   (c) a tool needing approval: "pending" after approval_wait, approved by a person through
#       the admin API, then the same call runs, once.
# Exits non-zero if any answer is not what it should be. DEMO_KEEP=1 keeps the directory.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_build_deps
ensure_packages "for the demo" curl:curl python3:python3
cargo build --bin portcullis --example mcp_server
bin=$PWD/target/debug

work=$(mktemp -d)
cleanup() {
  for p in ${gw:-} ${srv:-}; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "${DEMO_KEEP:-}" ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fail() {
  echo "FAILED: $*" >&2
  echo "--- gateway stderr (last lines)" >&2; tail -n 20 "$work/gateway.err" >&2 || true
  echo "--- MCP server stderr" >&2; tail -n 20 "$work/server.err" >&2 || true
  exit 1
}
expect() { # ANSWER PATTERN WHAT
  grep -q -- "$2" <<<"$1" || { echo "$1" >&2; fail "$3"; }
}
if [ -t 1 ]; then bold=$'\033[1m' plain=$'\033[0m'; else bold='' plain=''; fi
say() { printf '\n%s== %s%s\n' "$bold" "$*" "$plain"; }
pretty() { if command -v jq >/dev/null 2>&1; then jq .; else python3 -m json.tool; fi; }
# A tools/list answer, less the tools' input schemas (long, and not the point here).
pretty_list() {
  python3 -c 'import json,sys
d = json.load(sys.stdin)
for t in d.get("result", {}).get("tools", []): t.pop("inputSchema", None)
print(json.dumps(d))' | pretty
}

# Three free loopback ports: the MCP server, the gateway's proxy and admin listeners.
read -r mcp_port gw_port admin_port < <(python3 -c 'import socket
ss = [socket.socket() for _ in range(3)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')
sed -e "s/127\.0\.0\.1:8931/127.0.0.1:$mcp_port/" -e "s/127\.0\.0\.1:8080/127.0.0.1:$gw_port/" \
    -e "s/127\.0\.0\.1:9901/127.0.0.1:$admin_port/" examples/mcp/gateway.yaml > "$work/gateway.yaml"
"$bin/portcullis" keygen --out "$work/signing-key.pem" >/dev/null
"$bin/portcullis" approver-token --out "$work/approver-alice" >/dev/null

"$bin/examples/mcp_server" --listen "127.0.0.1:$mcp_port" 2>"$work/server.err" &
srv=$!
"$bin/portcullis" run -c "$work/gateway.yaml" 2>"$work/gateway.err" &
gw=$!
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$admin_port/readyz" >/dev/null \
    && [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$mcp_port/mcp")" != 000 ] && break
  sleep 0.1
done
curl -sf "http://127.0.0.1:$admin_port/readyz" >/dev/null || fail "the gateway did not start"

server=http://127.0.0.1:$mcp_port/mcp
gateway=http://127.0.0.1:$gw_port/mcp
reader=$("$bin/portcullis" token issue -c "$work/gateway.yaml" --agent reporting-bot --scopes tickets:read)
writer=$("$bin/portcullis" token issue -c "$work/gateway.yaml" --agent support-bot --scopes tickets:read tickets:write)

# One JSON-RPC request, stateless revision (2026-07-28): no initialize, no session; every
# request says its protocol version and method in headers (the server requires Mcp-Method,
# and Mcp-Name for a named target) and its version and capabilities in params._meta.
#   rpc URL TOKEN METHOD NAME PARAMS_JSON
echo 0 > "$work/id"
rpc() {
  local url=$1 token=$2 method=$3 name=$4 params=${5:-"{}"} id
  id=$(($(cat "$work/id") + 1)); echo "$id" > "$work/id"   # rpc runs in $(...) subshells
  local meta='"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}'
  [ "$params" = "{}" ] && params="{$meta}" || params="${params%\}},$meta}"
  local args=(-s "$url" -H 'content-type: application/json'
    -H 'accept: application/json, text/event-stream' -H 'mcp-protocol-version: 2026-07-28'
    -H "mcp-method: $method" -d "{\"jsonrpc\":\"2.0\",\"id\":$id,\"method\":\"$method\",\"params\":$params}")
  [ -n "$name" ] && args+=(-H "mcp-name: $name")
  [ -n "$token" ] && args+=(-H "authorization: Bearer $token")
  curl "${args[@]}"
}
tool_names() { python3 -c 'import json,sys; print(" ".join(t["name"] for t in json.load(sys.stdin)["result"]["tools"]))'; }

echo "MCP server: $server    gateway: $gateway    admin: http://127.0.0.1:$admin_port"
echo "agents: reporting-bot (token scopes tickets:read), support-bot (tickets:read tickets:write)"

say "(a) tools/list straight from the MCP server: every tool it has"
direct=$(rpc "$server" "" tools/list "")
pretty_list <<<"$direct"
[ "$(tool_names <<<"$direct")" = "admin_reset delete_ticket get_ticket search_tickets" ] \
  || fail "the server should list four tools"

say "(a) tools/list through the gateway as reporting-bot: only what its rules and scopes allow"
echo "    (admin_reset: no rule names it; delete_ticket: needs tickets:write)"
listed=$(rpc "$gateway" "$reader" tools/list "")
pretty_list <<<"$listed"
[ "$(tool_names <<<"$listed")" = "get_ticket search_tickets" ] \
  || fail "the reader should see get_ticket and search_tickets only"
echo "support-bot sees: $(rpc "$gateway" "$writer" tools/list "" | tool_names)"

say "(b) reporting-bot calls admin_reset anyway: a JSON-RPC error (HTTP 200), nothing runs"
refused=$(rpc "$gateway" "$reader" tools/call admin_reset '{"name":"admin_reset","arguments":{}}')
pretty <<<"$refused"
expect "$refused" '"code":-32001' "admin_reset should be refused with JSON-RPC error -32001"
expect "$refused" '"error":"mcp_not_allowed"' "the refusal should say mcp_not_allowed"
! grep -q admin_reset "$work/server.err" || fail "admin_reset reached the MCP server"

say "(c) support-bot calls delete_ticket {\"id\":5}: it needs a person's approval"
echo "    (the gateway waits approval_wait = 5s for a decision, then answers 'pending')"
call='{"name":"delete_ticket","arguments":{"id":5}}'
t0=$SECONDS
pending=$(rpc "$gateway" "$writer" tools/call delete_ticket "$call")
pretty <<<"$pending"
expect "$pending" '"isError":true' "the pending answer should be a tool result with isError true"
expect "$pending" '"status":"pending"' "the pending answer should say status pending"
approval=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["result"]["_meta"]["portcullis/approval"]["approval_id"])' <<<"$pending") \
  || fail "no approval id in the pending answer"
echo "answered after $((SECONDS - t0))s; approval id: $approval"
! grep -q delete_ticket "$work/server.err" || fail "delete_ticket ran before it was approved"

say "alice approves it through the admin API"
echo "curl -X POST http://127.0.0.1:$admin_port/api/approvals/$approval/approve -H 'authorization: Bearer <alice>' -d '{\"reason\":...}'"
approved=$(curl -s -X POST "http://127.0.0.1:$admin_port/api/approvals/$approval/approve" \
  -H "authorization: Bearer $(cat "$work/approver-alice.token")" -H 'content-type: application/json' \
  -d '{"reason":"duplicate of #4, fine to delete"}')
# The answer is the whole approval record (what alice saw: body, headers, digest); a few fields:
python3 -c 'import json,sys
a = json.load(sys.stdin)
print(json.dumps({k: a.get(k) for k in ("id", "status", "agent", "route", "body_preview", "decided_by", "votes")}))' <<<"$approved" | pretty
expect "$approved" '"status":"approved"' "the approval should be recorded"

say "support-bot calls delete_ticket {\"id\":5} again, same arguments: it runs"
ran=$(rpc "$gateway" "$writer" tools/call delete_ticket "$call")
pretty <<<"$ran"
expect "$ran" 'deleted ticket #5' "the approved call should run"
expect "$ran" '"isError":false' "the approved call should succeed"
[ "$(grep -c 'delete_ticket 5' "$work/server.err")" = 1 ] || fail "delete_ticket should have run exactly once"
echo "MCP server log: $(grep 'delete_ticket' "$work/server.err")"

say "what the access log recorded"
for _ in $(seq 20); do  # it is written off the request path
  [ "$(grep -c '"decision":"allow".*"name":"delete_ticket"' "$work/access.log")" = 1 ] && break; sleep 0.1
done
python3 - "$work/access.log" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    e = json.loads(line)
    if "event" in e:
        print(f'  {e["event"]:22} approval {e["approval_id"]} {e.get("approver") or ""}')
    else:
        m = e.get("mcp") or {}
        print(f'  {e["agent"]:14} {m.get("method", "-"):11} {m.get("name", ""):14} '
              f'{e["decision"]:6} {e.get("reason") or ""}')
PY

say "all steps showed what they should"
