#!/usr/bin/env bash
# Quickstart, one command: build, start the demo tools API on 127.0.0.1:9090, then the gateway
# on 127.0.0.1:8080 (admin and approvals console on 127.0.0.1:9901, token service on 127.0.0.1:8081)
# with the bundled gateway.yaml.
# Ctrl-C stops both. Keys, the approver and operator tokens and support-bot's client secret are
# made on first start under .portcullis/.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_build_deps
cargo build --release --bin portcullis --bin portcullis-demo-tools
export TICKETS_API_KEY="${TICKETS_API_KEY:-demo-tickets-key}"
if [ ! -f .portcullis/signing-key.pem ]; then
  ./target/release/portcullis keygen --out .portcullis/signing-key.pem
fi
if [ ! -f .portcullis/approver-alice.token ]; then
  ./target/release/portcullis approver-token --out .portcullis/approver-alice
fi
if [ ! -f .portcullis/ops.token ]; then
  ./target/release/portcullis approver-token --out .portcullis/ops
fi
if [ ! -f .portcullis/support-bot.secret ]; then
  ./target/release/portcullis client-secret --out .portcullis/support-bot
fi
./target/release/portcullis-demo-tools 127.0.0.1:9090 &
demo=$!
trap 'kill "$demo" 2>/dev/null || true' EXIT INT TERM
./target/release/portcullis run -c gateway.yaml
