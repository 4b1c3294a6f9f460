#!/usr/bin/env bash
# The whole test suite, one command (CI runs exactly this through .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_build_deps
ensure_test_deps
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --lib --bins --tests --no-fail-fast
else
  cargo test --lib --bins --tests
fi
