#!/usr/bin/env bash
# The cluster testbed: Switchyard as it runs in production, on one machine and on loopback.
#
#   HAProxy  public  :18080  (REST /{service}/{path}, GraphQL /graphql)  -> gw-1..3 public
#            control :18081  (registration: gRPC and REST)               -> gw-1..3 control
#            stats   :18082  (/stats page, /metrics for Prometheus)
#   gateways gw-1..3 public 127.0.0.1:18181..18183, control 127.0.0.1:18191..18193,
#            sharing their registry over one Kafka broker (KRaft) on 127.0.0.1:19292
#   services rust-sample (2 instances of the Rust sample), python-sample (2 of the Python
#            sample), registered through HAProxy's control frontend
#   Prometheus 127.0.0.1:18090, scraping the gateways' /metrics and HAProxy's
#
#   testbeds/cluster/cluster.sh up        install what is missing (HAProxy, Prometheus and curl
#                                         from Debian, the Kafka jars, the test virtualenv),
#                                         build, start everything, wait until it all serves,
#                                         print the endpoints
#   testbeds/cluster/cluster.sh down      stop everything `up` started (SIGTERM, then SIGKILL)
#   testbeds/cluster/cluster.sh status    each component, its pid and state; exit 0 if all run
#   testbeds/cluster/cluster.sh start|stop|kill COMPONENT    one component (kill: SIGKILL);
#                                         the scenario tests use these
#   testbeds/cluster/cluster.sh pid COMPONENT                its pid, if it runs
#
# Components: kafka gw-1 gw-2 gw-3 haproxy rust-sample-1 rust-sample-2 python-sample-1
# python-sample-2 prometheus nginx. `up` on a running cluster prints its endpoints and exits 0; on a
# partly running one it fails and says to run `down` first. State, pids and logs live in
# testbeds/.run/cluster/ (logs/COMPONENT.log; each start appends to its component's log).
#
# Environment (read by `up`, which saves the resolved values in cluster.env for the other
# commands): SWITCHYARD_BIN, SAMPLE_SERVICE_BIN (prebuilt binaries; default: build them with
# `cargo build --release`), CLUSTER_PUBLIC_PORT (18080), CLUSTER_CONTROL_PORT (18081),
# CLUSTER_STATS_PORT (18082), CLUSTER_CONSOLE_PORT (18083: nginx, the web console),
# CLUSTER_PROMETHEUS_PORT (18090), CLUSTER_GW_PUBLIC_BASE (18180:
# gw-i gets base+i), CLUSTER_GW_CONTROL_BASE (18190), CLUSTER_KAFKA_PORT (19292),
# CLUSTER_KAFKA_CONTROLLER_PORT (19293), CLUSTER_EVICT_AFTER_MS (2000), CLUSTER_LEASE_MS
# (60000), CLUSTER_RUN_DIR (testbeds/.run/cluster), PYTHON (for the virtualenv).
set -euo pipefail

here="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
testbeds="$(dirname -- "$here")"
root="$(dirname -- "$testbeds")"
run="${CLUSTER_RUN_DIR:-$testbeds/.run/cluster}"
pids="$run/pids"
logs="$run/logs"
venv="$testbeds/.venv"
env_file="$run/cluster.env"

COMPONENTS=(kafka gw-1 gw-2 gw-3 haproxy rust-sample-1 rust-sample-2 python-sample-1
  python-sample-2 prometheus nginx)
GATEWAYS=(gw-1 gw-2 gw-3)
RUST_INSTANCES=(rust-sample-1 rust-sample-2)
PYTHON_INSTANCES=(python-sample-1 python-sample-2)

# Bounds, in seconds.
STOP_WAIT_S=10 # SIGTERM to SIGKILL (a gateway drains for at most 2 s, a service deregisters in 2 s)
KILL_WAIT_S=5  # SIGKILL to gone
START_WAIT_S=30
READY_WAIT_S=90

log() { printf 'cluster: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

# --- settings ------------------------------------------------------------------------------

settings() {
  if [[ -f "$env_file" ]]; then
    # shellcheck source=/dev/null
    source "$env_file"
    return 0
  fi
  public_port="${CLUSTER_PUBLIC_PORT:-18080}"
  control_port="${CLUSTER_CONTROL_PORT:-18081}"
  stats_port="${CLUSTER_STATS_PORT:-18082}"
  console_port="${CLUSTER_CONSOLE_PORT:-18083}"
  prometheus_port="${CLUSTER_PROMETHEUS_PORT:-18090}"
  gw_public_base="${CLUSTER_GW_PUBLIC_BASE:-18180}"
  gw_control_base="${CLUSTER_GW_CONTROL_BASE:-18190}"
  kafka_port="${CLUSTER_KAFKA_PORT:-19292}"
  kafka_controller_port="${CLUSTER_KAFKA_CONTROLLER_PORT:-19293}"
  evict_after_ms="${CLUSTER_EVICT_AFTER_MS:-2000}"
  lease_ms="${CLUSTER_LEASE_MS:-60000}"
  gateway_bin="${SWITCHYARD_BIN:-target/release/switchyard}"
  sample_bin="${SAMPLE_SERVICE_BIN:-target/release/sample-service}"
  [[ "$gateway_bin" == /* ]] || gateway_bin="$root/$gateway_bin"
  [[ "$sample_bin" == /* ]] || sample_bin="$root/$sample_bin"
  topic="switchyard-cluster"
}

save_settings() {
  mkdir -p "$run"
  local name
  : >"$env_file.tmp"
  for name in public_port control_port stats_port console_port prometheus_port gw_public_base \
    gw_control_base kafka_port kafka_controller_port evict_after_ms lease_ms gateway_bin \
    sample_bin topic; do
    printf '%s=%q\n' "$name" "${!name}" >>"$env_file.tmp"
  done
  mv "$env_file.tmp" "$env_file"
}

gw_index() { echo "${1#gw-}"; }
gw_public() { echo "127.0.0.1:$((gw_public_base + $(gw_index "$1")))"; }
gw_control() { echo "127.0.0.1:$((gw_control_base + $(gw_index "$1")))"; }

write_cluster_json() {
  local gateways="" gw sep=""
  for gw in "${GATEWAYS[@]}"; do
    gateways+="$sep{\"name\": \"$gw\", \"server\": \"gw$(gw_index "$gw")\", \"public\": \"http://$(gw_public "$gw")\", \"control\": \"http://$(gw_control "$gw")\"}"
    sep=", "
  done
  cat >"$run/cluster.json" <<JSON
{
  "public": "http://127.0.0.1:$public_port",
  "control": "http://127.0.0.1:$control_port",
  "stats": "http://127.0.0.1:$stats_port/stats",
  "haproxy_socket": "$run/haproxy.sock",
  "prometheus": "http://127.0.0.1:$prometheus_port",
  "console": "http://127.0.0.1:$console_port/console/",
  "kafka": "127.0.0.1:$kafka_port",
  "topic": "$topic",
  "gateway_bin": "$gateway_bin",
  "evict_after_ms": $evict_after_ms,
  "lease_ms": $lease_ms,
  "gateways": [$gateways],
  "services": {
    "rust-sample": ["rust-sample-1", "rust-sample-2"],
    "python-sample": ["python-sample-1", "python-sample-2"]
  },
  "run_dir": "$run",
  "operator_token_file": "$(keys_dir)/operator.token"
}
JSON
}

# --- installing ----------------------------------------------------------------------------

# Installs Debian packages. Their maintainer scripts would start the packaged system services
# (HAProxy with /etc/haproxy/haproxy.cfg, Prometheus on :9090) outside this testbed's control;
# a policy-rc.d that answers 101 ("action forbidden") stops that, and is removed afterwards if
# this script put it there.
apt_install() {
  if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    die "missing: $* (Debian packages); install them, or run this as root on Debian/Ubuntu"
  fi
  local policy=/usr/sbin/policy-rc.d made_policy="" status=0
  if [[ ! -e "$policy" ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && made_policy=1
  fi
  log "installing $* with apt-get"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends "$@" >/dev/null; } || status=$?
  [[ -n "$made_policy" ]] && rm -f "$policy"
  return "$status"
}

install_missing() {
  local missing=() cmd pkg
  for pair in haproxy:haproxy prometheus:prometheus nginx:nginx curl:curl setsid:util-linux; do
    cmd="${pair%%:*}" pkg="${pair#*:}"
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if ((${#missing[@]})); then
    apt_install "${missing[@]}"
  fi
}

build() {
  if [[ -z "${SWITCHYARD_BIN:-}" ]]; then
    log "building the gateway and the Rust sample (cargo build --release)"
    (cd "$root" && cargo build --release --quiet -p switchyard -p sample-service)
  fi
  [[ -x "$gateway_bin" ]] || die "no gateway binary at $gateway_bin (SWITCHYARD_BIN)"
  [[ -x "$sample_bin" ]] || die "no sample service binary at $sample_bin (SAMPLE_SERVICE_BIN)"
  # The virtualenv with the Python sample's packages, made as the end-to-end tests make it.
  SWITCHYARD_BIN="$gateway_bin" SAMPLE_SERVICE_BIN="$sample_bin" E2E_PREPARE_ONLY=1 \
    "$testbeds/e2e.sh"
}

# --- processes -----------------------------------------------------------------------------

# A process is identified by its pid and its start time (field 22 of /proc/PID/stat), so a
# recycled pid is never taken for ours. A zombie counts as gone.
start_time() {
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }" # the fields after "pid (comm) "; the first is the state
  # shellcheck disable=SC2086
  set -- $stat
  [[ "$1" != Z && "$1" != X ]] || return 1
  echo "${20}"
}

# The pid of a running component, or nothing (exit 1).
component_pid() {
  local name="$1" file pid started
  if [[ "$name" == kafka ]]; then
    file="$run/kafka/broker.pid"
  else
    file="$pids/$name"
  fi
  [[ -f "$file" ]] || return 1
  read -r pid started <"$file" || true
  [[ -n "${pid:-}" ]] || return 1
  local now
  now="$(start_time "$pid")" || return 1
  [[ -z "${started:-}" || "$now" == "$started" ]] || return 1
  echo "$pid"
}

running() { component_pid "$1" >/dev/null; }

# The environment of every child: the gateway reads SWITCHYARD_* variables as configuration,
# so only the flags below configure it (SWITCHYARD_LOG, the log filter, is kept).
child_env() {
  local var
  for var in $(compgen -e); do
    if [[ "$var" == SWITCHYARD_* && "$var" != SWITCHYARD_LOG ]]; then unset "$var"; fi
  done
  unset GATEWAY_CONTROL
  export NO_COLOR=1 PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
}

# launch NAME COMMAND...: starts COMMAND in a session of its own (so a Ctrl-C meant for a test
# run does not reach it; `down` stops it), output appended to logs/NAME.log, pid recorded.
launch() {
  local name="$1"
  shift
  mkdir -p "$pids" "$logs"
  printf '\n==== %s started: %s\n' "$(date '+%F %T')" "$*" >>"$logs/$name.log"
  (
    child_env
    exec setsid "$@" </dev/null >>"$logs/$name.log" 2>&1
  ) &
  local pid=$!
  printf '%s %s\n' "$pid" "$(start_time "$pid" || echo 0)" >"$pids/$name"
}

# Waits until PROBE (a command) succeeds while NAME runs; fails with the log tail otherwise.
await() {
  local name="$1" what="$2" timeout_s="$3"
  shift 3
  local deadline=$((SECONDS + timeout_s))
  until "$@" >/dev/null 2>&1; do
    if ! running "$name"; then
      log "$name exited before $what; the end of $logs/$name.log:"
      tail -n 30 "$logs/$name.log" >&2 || true
      return 1
    fi
    if ((SECONDS >= deadline)); then
      log "$name: no $what within $timeout_s s; the end of $logs/$name.log:"
      tail -n 30 "$logs/$name.log" >&2 || true
      return 1
    fi
    sleep 0.1
  done
}

http_ok() { curl -fsS -o /dev/null --max-time 2 "$1"; }

# The log of NAME since its last start holds a line matching REGEX.
logged_since_start() {
  awk -v re="$2" '/^==== .* started: /{seen=0} $0 ~ re {seen=1} END{exit !seen}' "$logs/$1.log"
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

need_port_free() {
  port_free "$2" || die "$1: port $2 is taken by another process (set CLUSTER_*_PORT or CLUSTER_*_BASE)"
}

# Stops a process: SIGTERM (or SIGKILL with --kill), waits, escalates to SIGKILL.
stop_pid() {
  local name="$1" pid="$2" signal="${3:-TERM}"
  local started
  started="$(start_time "$pid")" || return 0
  kill "-$signal" "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + STOP_WAIT_S))
  while [[ "$(start_time "$pid" || true)" == "$started" ]]; do
    if ((SECONDS >= deadline)); then
      if [[ "$signal" == KILL ]]; then
        log "$name (pid $pid) still there after SIGKILL"
        return 1
      fi
      log "$name (pid $pid) did not stop within $STOP_WAIT_S s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      signal=KILL
      deadline=$((SECONDS + KILL_WAIT_S))
    fi
    sleep 0.1
  done
}

kafka_sh() {
  KAFKA_DIR="$run/kafka" KAFKA_PORT="$kafka_port" KAFKA_CONTROLLER_PORT="$kafka_controller_port" \
    "$testbeds/kafka/kafka.sh" "$@"
}

# --- components ----------------------------------------------------------------------------

# kafka.sh runs in a session of its own, like every other component, so that the broker it
# leaves running does not get the signals meant for whoever asked for the start (a test run
# ended by `timeout` signals its whole process group).
start_kafka() {
  KAFKA_DIR="$run/kafka" KAFKA_PORT="$kafka_port" KAFKA_CONTROLLER_PORT="$kafka_controller_port" \
    setsid "$testbeds/kafka/kafka.sh" start >/dev/null </dev/null
}

# The control credentials (docs/security.md): an operator key pair made with `switchyard token
# keygen`, and credentials issued with it, one file each under $run/keys (mode 0600): the
# operator's (every service, reads; the scenarios use it), Prometheus's (reads) and one per
# sample service (its own service). Made once; kept across `down` and `up` with the run
# directory.
keys_dir() { echo "$run/keys"; }

make_credentials() {
  local keys
  keys="$(keys_dir)"
  mkdir -p "$keys"
  chmod 700 "$keys"
  if [[ ! -f "$keys/operator.key" ]]; then
    "$gateway_bin" token keygen --out "$keys/operator" 2>/dev/null ||
      die "switchyard token keygen failed"
  fi
  issue_credential operator --services '*' --read
  issue_credential prometheus --read
  issue_credential rust-sample --services rust-sample
  issue_credential python-sample --services python-sample
}

# issue_credential NAME FLAGS...: $keys/NAME.token, unless it exists.
issue_credential() {
  local name="$1" keys
  shift
  keys="$(keys_dir)"
  [[ -s "$keys/$name.token" ]] && return 0
  (umask 077 && "$gateway_bin" token issue --key "$keys/operator.key" --subject "cluster-$name"     --ttl 30d "$@" >"$keys/$name.token.tmp") || die "switchyard token issue failed for $name"
  mv "$keys/$name.token.tmp" "$keys/$name.token"
}

start_gateway() {
  local name="$1" public control
  public="$(gw_public "$name")" control="$(gw_control "$name")"
  need_port_free "$name" "${public##*:}"
  need_port_free "$name" "${control##*:}"
  # evict_after_ms: short, so that the eviction scenario is quick. publish_wait_ms and
  # message_timeout_ms: a registration while Kafka is down is answered 202 after 500 ms and
  # retried every 2 s. drain_timeout_ms: `down` need not wait out the default 10 s.
  # log.access: one line per request with its trace id, for an operator following a trace.
  # control.jwt_keys_file: registry changes and reads need a credential (make_credentials).
  # graphql.websockets_per_client_max: every client reaches the gateway from HAProxy's
  # address, so the per-address bound is the listener's. upstream.allow_addresses: the
  # sample instances listen on loopback, which the address policy refuses unless allowed.
  # audit.enabled: every request and registry change is audited on the broker's audit topics;
  # the scenarios count the records against the load generator's own counts.
  launch "$name" "$gateway_bin" serve --node-id "$name" \
    --public-listen "$public" --control-listen "$control" \
    --set bus.kind=kafka --set "bus.kafka.brokers=127.0.0.1:$kafka_port" \
    --set "bus.kafka.topic=$topic" \
    --set "upstream.evict_after_ms=$evict_after_ms" \
    --set bus.publish_wait_ms=500 --set bus.kafka.message_timeout_ms=2000 \
    --set shutdown.drain_timeout_ms=2000 --set log.access=true \
    --set graphql.websockets_per_client_max=1024 \
    --set "control.jwt_keys_file=$(keys_dir)/operator.pub.pem" \
    --set 'upstream.allow_addresses=["127.0.0.0/8"]' \
    --set audit.enabled=true
  await "$name" "answer on /healthz" "$START_WAIT_S" http_ok "http://$control/healthz"
}

start_haproxy() {
  need_port_free haproxy "$public_port"
  need_port_free haproxy "$control_port"
  need_port_free haproxy "$stats_port"
  export SWY_PUBLIC_BIND="127.0.0.1:$public_port" SWY_CONTROL_BIND="127.0.0.1:$control_port"
  export SWY_STATS_BIND="127.0.0.1:$stats_port" SWY_HAPROXY_SOCKET="$run/haproxy.sock"
  local gw i
  for gw in "${GATEWAYS[@]}"; do
    i="$(gw_index "$gw")"
    export "SWY_GW${i}_PUBLIC=$(gw_public "$gw")" "SWY_GW${i}_CONTROL=$(gw_control "$gw")"
  done
  haproxy -c -q -f "$here/haproxy.cfg" || die "haproxy rejected $here/haproxy.cfg"
  rm -f "$run/haproxy.sock"
  # -db: stay in the foreground (the pid recorded is HAProxy's), logs on stdout.
  launch haproxy haproxy -db -f "$here/haproxy.cfg"
  await haproxy "stats page" "$START_WAIT_S" http_ok "http://127.0.0.1:$stats_port/stats"
}

start_service() {
  local name="$1" service="${1%-*}"
  local args=(--gateway "http://127.0.0.1:$control_port" --service "$service"
    --instance-id "$name" --listen 127.0.0.1:0 --lease-ms "$lease_ms")
  # The instance's credential goes in its environment, read from its file by a shell that then
  # becomes the instance: neither the command line nor the log shows it.
  local with_token=(sh -c 'SWITCHYARD_TOKEN="$(cat "$0")" exec "$@"' "$(keys_dir)/$service.token")
  case "$service" in
    rust-sample) launch "$name" "${with_token[@]}" "$sample_bin" "${args[@]}" ;;
    python-sample) launch "$name" "${with_token[@]}" "$venv/bin/python" "$testbeds/services/python/service.py" "${args[@]}" ;;
    *) die "unknown service $service" ;;
  esac
  await "$name" "listening line" "$START_WAIT_S" logged_since_start "$name" "^listening on "
}

start_prometheus() {
  need_port_free prometheus "$prometheus_port"
  local gw targets=""
  for gw in "${GATEWAYS[@]}"; do
    targets+="
      - targets: ['$(gw_control "$gw")']
        labels: {node: '$gw'}"
  done
  cat >"$run/prometheus.yml" <<YAML
# Written by testbeds/cluster/cluster.sh up.
global:
  scrape_interval: 1s
  scrape_timeout: 900ms
  evaluation_interval: 1s
scrape_configs:
  - job_name: switchyard
    # /metrics on the control listener needs a credential with read.
    authorization:
      type: Bearer
      credentials_file: $(keys_dir)/prometheus.token
    static_configs:$targets
  - job_name: haproxy
    static_configs:
      - targets: ['127.0.0.1:$stats_port']
YAML
  launch prometheus prometheus --config.file="$run/prometheus.yml" \
    --storage.tsdb.path="$run/prometheus-data" --storage.tsdb.retention.time=1d \
    --web.listen-address="127.0.0.1:$prometheus_port"
  await prometheus "readiness" "$START_WAIT_S" http_ok "http://127.0.0.1:$prometheus_port/-/ready"
}

# nginx serves the web console as the original design has it: the files the gateways embed,
# from gateway/console/dist, and beside them a peers.json naming each gateway under
# /gw/<i>/, a same-origin path nginx proxies to that gateway's control listener (so the
# Cluster page shows the three digests side by side). Everything else (/v1, /graphql, /metrics,
# /readyz) goes to HAProxy's control front, like any operator's call. Host is passed on, so a
# gateway sees the WebSocket's Origin as its own.
start_nginx() {
  need_port_free nginx "$console_port"
  local d="$run/nginx" gw i peers="" sep="" locations=""
  mkdir -p "$d"
  for gw in "${GATEWAYS[@]}"; do
    i="$(gw_index "$gw")"
    peers+="$sep{\"name\": \"$gw\", \"base\": \"gw/$i/\"}"
    sep=", "
    locations+="
        location /gw/$i/ {
            proxy_pass http://$(gw_control "$gw")/;
            include $d/proxy.conf;
        }"
  done
  printf '[%s]\n' "$peers" >"$d/peers.json"
  cat >"$d/proxy.conf" <<NGINX
proxy_http_version 1.1;
proxy_set_header Host \$http_host;
proxy_set_header Upgrade \$http_upgrade;
proxy_set_header Connection \$connection_upgrade;
proxy_read_timeout 1h;
proxy_buffering off;
NGINX
  cat >"$d/nginx.conf" <<NGINX
# Written by testbeds/cluster/cluster.sh up.
daemon off;
worker_processes 1;
pid $d/nginx.pid;
error_log stderr warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $d/body;
    proxy_temp_path $d/proxy;
    fastcgi_temp_path $d/fastcgi;
    uwsgi_temp_path $d/uwsgi;
    scgi_temp_path $d/scgi;
    client_max_body_size 1m;
    server_tokens off;
    types {
        text/html html;
        text/javascript js;
        text/css css;
        application/json json;
    }
    charset utf-8;
    charset_types text/css text/javascript application/json;
    map \$http_upgrade \$connection_upgrade { default upgrade; "" close; }
    server {
        listen 127.0.0.1:$console_port;
        location = /console { return 308 /console/; }
        location /console/ {
            alias $root/gateway/console/dist/;
            index index.html;
            etag on;
            add_header Cache-Control "no-cache" always;
            add_header Content-Security-Policy "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'" always;
            add_header X-Content-Type-Options nosniff always;
            add_header X-Frame-Options DENY always;
            add_header Referrer-Policy no-referrer always;
            limit_except GET { deny all; }
        }
        location = /console/peers.json {
            alias $d/peers.json;
            add_header Cache-Control "no-cache" always;
            add_header X-Content-Type-Options nosniff always;
        }$locations
        location / {
            proxy_pass http://127.0.0.1:$control_port;
            include $d/proxy.conf;
        }
    }
}
NGINX
  nginx -t -q -e stderr -c "$d/nginx.conf" || die "nginx rejected $d/nginx.conf"
  launch nginx nginx -e stderr -c "$d/nginx.conf"
  await nginx "the console" "$START_WAIT_S" http_ok "http://127.0.0.1:$console_port/console/"
}

start_component() {
  make_credentials
  case "$1" in
    kafka) start_kafka ;;
    gw-[123]) start_gateway "$1" ;;
    haproxy) start_haproxy ;;
    rust-sample-[12] | python-sample-[12]) start_service "$1" ;;
    prometheus) start_prometheus ;;
    nginx) start_nginx ;;
    *) die "unknown component $1 (one of: ${COMPONENTS[*]})" ;;
  esac
}

stop_component() {
  local name="$1" signal="${2:-TERM}" pid
  if [[ "$name" == kafka ]]; then
    if [[ "$signal" == KILL ]] && pid="$(component_pid kafka)"; then
      stop_pid kafka "$pid" KILL
    fi
    kafka_sh stop
    return
  fi
  if pid="$(component_pid "$name")"; then
    stop_pid "$name" "$pid" "$signal" || return 1
  fi
  rm -f "$pids/$name"
}

known_component() {
  local c
  for c in "${COMPONENTS[@]}"; do [[ "$c" == "$1" ]] && return 0; done
  die "unknown component ${1:-(none)} (one of: ${COMPONENTS[*]})"
}

# --- commands ------------------------------------------------------------------------------

print_endpoints() {
  cat <<TEXT
Switchyard cluster testbed is up (state and logs: $run)

  public   http://127.0.0.1:$public_port    HAProxy -> gw-1..3: REST /{service}/{path}, GraphQL /graphql
  control  http://127.0.0.1:$control_port    HAProxy -> gw-1..3: registration (gRPC, REST /v1/services)
  stats    http://127.0.0.1:$stats_port/stats   HAProxy's servers; its metrics at /metrics
  console  http://127.0.0.1:$console_port/console/   nginx: the web console, the gateways side by side (token: $(keys_dir)/operator.token)
  Prometheus http://127.0.0.1:$prometheus_port
  gateways $(for gw in "${GATEWAYS[@]}"; do printf '%s public %s control %s; ' "$gw" "$(gw_public "$gw")" "$(gw_control "$gw")"; done)
  Kafka    127.0.0.1:$kafka_port, topic $topic
  services rust-sample (rust-sample-1, -2), python-sample (python-sample-1, -2)

Try:
  curl -si http://127.0.0.1:$public_port/rust-sample/hello
  curl -s http://127.0.0.1:$public_port/python-sample/hello
  curl -s http://127.0.0.1:$control_port/v1/services -H "authorization: Bearer \$(cat $(keys_dir)/operator.token)"
  testbeds/cluster/cluster.sh status
  testbeds/cluster/cluster.sh down
TEXT
}

cmd_up() {
  local c up=() down=()
  if [[ -f "$env_file" ]]; then
    settings
    for c in "${COMPONENTS[@]}"; do
      if running "$c"; then up+=("$c"); else down+=("$c"); fi
    done
    if ((${#down[@]} == 0)); then
      log "already up"
      print_endpoints
      return 0
    fi
    if ((${#up[@]})); then
      die "partly up (running: ${up[*]}; not running: ${down[*]}): run testbeds/cluster/down first"
    fi
    rm -f "$env_file"
  fi
  settings
  install_missing
  build
  # A fresh cluster each time: new pids, logs (the last run's are kept in logs.previous) and
  # Prometheus data, a wiped Kafka log (the jars fetched into $run/kafka/lib stay).
  kafka_sh wipe >/dev/null 2>&1 || true
  rm -rf "$pids" "$run/logs.previous" "$run/prometheus-data" "$run/results.json" "$run/haproxy.sock"
  if [[ -d "$logs" ]]; then mv "$logs" "$run/logs.previous"; fi
  mkdir -p "$pids" "$logs"
  save_settings
  make_credentials
  write_cluster_json
  # If any step fails, stop what was started.
  trap 'status=$?; if ((status)); then log "up failed: stopping what it started"; cmd_down || true; fi' EXIT

  local py=python3
  [[ -x "$venv/bin/python" ]] && py="$venv/bin/python"
  log "starting Kafka on 127.0.0.1:$kafka_port"
  start_kafka
  for c in "${GATEWAYS[@]}"; do
    log "starting $c"
    start_gateway "$c"
  done
  "$py" "$here/cluster.py" wait-ready --timeout "$READY_WAIT_S"
  log "starting HAProxy"
  start_haproxy
  "$py" "$here/cluster.py" wait-haproxy-up --timeout "$READY_WAIT_S"
  for c in "${RUST_INSTANCES[@]}" "${PYTHON_INSTANCES[@]}"; do
    log "starting $c (registers through HAProxy)"
    start_service "$c"
  done
  "$py" "$here/cluster.py" wait-live rust-sample "${RUST_INSTANCES[@]}" --timeout "$READY_WAIT_S"
  "$py" "$here/cluster.py" wait-live python-sample "${PYTHON_INSTANCES[@]}" --timeout "$READY_WAIT_S"
  log "starting Prometheus"
  start_prometheus
  log "starting nginx (the web console)"
  start_nginx
  trap - EXIT
  print_endpoints
}

cmd_down() {
  [[ -d "$run" ]] || { log "nothing to stop"; return 0; }
  settings
  local c failed=() i
  # Services first (they deregister through HAProxy and the gateways), Kafka last.
  for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do
    c="${COMPONENTS[i]}"
    if running "$c"; then
      log "stopping $c"
      stop_component "$c" || failed+=("$c")
    elif [[ "$c" != kafka ]]; then
      rm -f "$pids/$c"
    fi
  done
  kafka_sh stop >/dev/null 2>&1 || failed+=(kafka)
  if ((${#failed[@]})); then
    die "could not stop: ${failed[*]}"
  fi
  rm -f "$env_file" "$run/haproxy.sock"
  log "down (logs kept in $logs)"
}

cmd_status() {
  [[ -f "$env_file" ]] || { echo "not up"; return 1; }
  settings
  local c pid all=0
  for c in "${COMPONENTS[@]}"; do
    if pid="$(component_pid "$c")"; then
      printf '%-16s running  pid %s\n' "$c" "$pid"
    else
      printf '%-16s stopped\n' "$c"
      all=1
    fi
  done
  if running haproxy; then
    echo
    echo "HAProxy servers:"
    python3 "$here/cluster.py" haproxy-states || echo "  (the stats socket does not answer)"
  fi
  return "$all"
}

main() {
  local command="${1:-}"
  case "$command" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    start | stop | kill | pid)
      [[ $# == 2 ]] || die "usage: $0 $command COMPONENT"
      known_component "$2"
      [[ -f "$env_file" ]] || die "the cluster is not up (run testbeds/cluster/up)"
      settings
      case "$command" in
        start)
          running "$2" && die "$2 is already running (pid $(component_pid "$2"))"
          start_component "$2"
          ;;
        stop) stop_component "$2" ;;
        kill) stop_component "$2" KILL ;;
        pid) component_pid "$2" ;;
      esac
      ;;
    *)
      sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
      exit 2
      ;;
  esac
}

main "$@"
