#!/usr/bin/env bash
# The CPU cost of a local rate limit: the gateway's CPU time per request (utime + stime from
# /proc, Linux) with and without one `[[rate_limits]]` rule, measured in the same run on two
# gateways side by side, the order alternating each round. One release sample instance is
# registered on both; oha (testbeds/bench/proxies.sh installs it) sends N requests at
# concurrency C to each in turn, ROUNDS times. The rule's rate is high enough that every
# request is admitted, so both gateways do the same work besides the check and its headers.
#
#   testbeds/bench/rate_limit_cost.sh              N=20000 C=8 ROUNDS=4
#   N=50000 ROUNDS=6 testbeds/bench/rate_limit_cost.sh
#
# Builds the gateway (without Kafka) and the sample service in release into $CARGO_TARGET_DIR
# (default target/). Prints each run and the ratio of the medians.
set -euo pipefail
root="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
T=${CARGO_TARGET_DIR:-$root/target}
cargo build -q --release -p switchyard --no-default-features --features demo --bin switchyard
cargo build -q --release -p sample-service
N=${N:-20000}; C=${C:-8}; ROUNDS=${ROUNDS:-4}
dir=$(mktemp -d)
cat > "$dir/limited.toml" <<'EOF'
[[rate_limits]]
name = "per-client"
key = "client_address"
rate = 1000000
per = "second"
EOF
touch "$dir/plain.toml"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap 'cleanup; rm -rf "$dir"' EXIT
start_gw() { # name config
  "$T/release/switchyard" serve --config "$2" --public-listen 127.0.0.1:0 --control-listen 127.0.0.1:0 \
    --set control.auth=none --set 'upstream.allow_addresses=["127.0.0.0/8"]' --set log.level=warn \
    > "$dir/$1.log" 2>&1 &
  pids+=($!); echo $! > "$dir/$1.pid"
  for _ in $(seq 100); do grep -q "switchyard listening" "$dir/$1.log" && break; sleep 0.1; done
  sed -n 's/.*switchyard listening: public=\(\S*\) control=\(\S*\).*/\1 \2/p' "$dir/$1.log" | head -1
}
read -r plain_pub plain_ctl < <(start_gw plain "$dir/plain.toml")
read -r lim_pub lim_ctl < <(start_gw limited "$dir/limited.toml")
"$T/release/sample-service" --gateway "http://$plain_ctl" --service bench --instance-id b-1 --listen 127.0.0.1:0 --lease-ms 600000 > "$dir/sample.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -q "listening on" "$dir/sample.log" && break; sleep 0.1; done
addr=$(sed -n 's/.*listening on \(\S*\) as.*/\1/p' "$dir/sample.log" | head -1)
curl -s -X PUT "http://$lim_ctl/v1/services/bench/instances/b-1" -H 'content-type: application/json' \
  -d "{\"addr\":\"$addr\",\"lease_ms\":600000}" > /dev/null
curl -sf "http://$lim_pub/bench/hello" -o /dev/null -D - | grep -i '^ratelimit' || { echo "no RateLimit header"; exit 1; }
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
run() { # name public
  local pid; pid=$(cat "$dir/$1.pid")
  local before after; before=$(ticks "$pid")
  oha -n "$N" -c "$C" --no-tui "http://$2/bench/hello" > "$dir/oha.txt"
  after=$(ticks "$pid")
  local ok; ok=$(grep -E '^\s*\[200\]' "$dir/oha.txt" | awk '{print $2}')
  local rps; rps=$(grep 'Requests/sec' "$dir/oha.txt" | awk '{print $2}')
  echo "$1 $(( (after - before) * 1000000 / hz / N )) us/request cpu, $rps req/s, 200s: $ok"
}
oha -n 2000 -c "$C" --no-tui "http://$plain_pub/bench/hello" > /dev/null
oha -n 2000 -c "$C" --no-tui "http://$lim_pub/bench/hello" > /dev/null
for r in $(seq "$ROUNDS"); do
  if (( r % 2 )); then run plain "$plain_pub"; run limited "$lim_pub"; else run limited "$lim_pub"; run plain "$plain_pub"; fi
done | tee "$dir/results.txt"
python3 - "$dir/results.txt" <<'EOF'
import sys, statistics
rows = [l.split() for l in open(sys.argv[1])]
cpu = {k: [int(r[1]) for r in rows if r[0] == k] for k in ("plain", "limited")}
rps = {k: [float(r[4]) for r in rows if r[0] == k] for k in ("plain", "limited")}
m = {k: statistics.median(v) for k, v in cpu.items()}
print(f"median CPU per request: plain {m['plain']} us, limited {m['limited']} us, ratio {m['limited']/m['plain']:.3f}")
print(f"median throughput ratio (limited/plain): {statistics.median(rps['limited'])/statistics.median(rps['plain']):.3f}")
EOF
