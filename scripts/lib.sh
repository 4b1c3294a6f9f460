# Shared helpers for the scripts. Sourced, not run.

# Install Debian packages that provide the given commands, when we can (root or passwordless
# sudo, apt-get); otherwise stop with one line saying what to install, instead of letting a
# build script panic half-way through a build or a test fail obscurely.
#   ensure_packages "why" command:package [command:package ...]
ensure_packages() {
  local why=$1; shift
  local missing=()
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair##*:}")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo"; else sudo="none"; fi
  fi
  if [ "$sudo" != "none" ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${missing[*]} ($why)" >&2
    $sudo apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "portcullis needs ${missing[*]} ($why): apt-get install -y ${missing[*]}; then run this again" >&2
    exit 1
  fi
}

# pingora's zlib-ng build needs cmake and a C compiler.
ensure_build_deps() {
  ensure_packages "to build pingora" cmake:cmake cc:gcc
}

# The console test drives Debian's Chromium through ChromeDriver. The shared-state tests start
# private redis-server and PostgreSQL servers on loopback (tests/support/stores.rs), from the
# Debian packages; PostgreSQL's server binaries live outside PATH, in /usr/lib/postgresql/N/bin.
ensure_test_deps() {
  ensure_packages "for the console's browser test" chromium:chromium chromedriver:chromium-driver
  ensure_packages "for the shared-state tests" redis-server:redis-server
  if ! compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null; then
    ensure_packages "for the shared-state tests" portcullis-needs-postgres-server:postgresql
  fi
  ensure_packages "for the alert-rule tests (promtool)" promtool:prometheus
  # An independent OAuth client for the token service's cross-check (tests/token_service.rs).
  if ! python3 -c 'import authlib, requests, cryptography' 2>/dev/null; then
    echo "installing authlib, requests, cryptography (PyPI) for the OAuth cross-check test" >&2
    python3 -m pip install --quiet authlib requests cryptography
  fi
}

# The benchmarked gateway: one worker; an ES256 token from the peer kit's key set (in $D);
# route + scope check, credential injection, access log to a file. Both load scripts use it,
# so their figures describe the same configuration.
#   bench_gateway_config PROXY_PORT ADMIN_PORT ACCESS_LOG [ROUTE_EXTRA_YAML [TOP_LEVEL_YAML]] > gateway.yaml
bench_gateway_config() {
  cat <<YAML
listen:
  proxy: ["127.0.0.1:$1"]
  admin: 127.0.0.1:$2
  threads: ${BENCH_THREADS:-1}                 # one worker, like each peer (BENCH_THREADS)
server:
  watch_config: false
issuers:
  - name: bench-idp
    issuer: https://idp.example.test
    audiences: [tools-gateway]
    algorithms: [ES256]
    jwks_file: ${D:-/tmp/peerbench}/jwks.json
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
${4:+$4
}access_log:
  path: $3
${5:-}
YAML
}

# What BENCH_POLICY=1 adds to the benchmarked route: one condition and one rate limit that
# every benchmark call passes (issue 9's "one condition and one rate limit" cost figure).
BENCH_POLICY_YAML='    conditions:
      - network: {from: [127.0.0.0/8]}
    limits:
      - rate: {requests: 100000000, per: 1s, scope: agent_route}'


# What BENCH_MONITOR=1 adds: every anomaly detector on (issue 10's "all detectors on" cost
# figure). The benchmarked route is tagged private_data; an unused route carries the egress tag
# the sensitive-sequence detector watches for, so ordinary bench calls trip nothing.
BENCH_MONITOR_ROUTE_YAML='    tags: [private_data]
  - name: outbound
    methods: [POST]
    path: /api/outbound/**
    upstream: up
    scopes: [read:tickets]
    tags: [egress]'
BENCH_MONITOR_YAML='monitoring:
  detectors:
    first_seen: {warmup: 1h, min_calls: 50}
    rate: {window: 1m, z: 4.0}
    denial_burst: {denials: 10, window: 1m}
    volume: {window: 1m, z: 4.0, max_bytes: 1GB}
    off_hours: {zone: UTC, min_days: 7}
    sensitive_sequence: {from: private_data, to: egress, within: 10m}
  playbooks:
    - name: watch
      steps:
        - [alert]'
