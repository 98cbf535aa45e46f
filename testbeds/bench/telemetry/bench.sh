#!/usr/bin/env bash
# Instructions per operation under callgrind: each case runs twice (n1 and n2 operations) and
# the difference of the instruction counts is divided by n2 - n1, so setup and teardown cancel.
# "main" is the thread that records (the request's thread); "all" adds the other threads
# (the span queue's consumer, the BatchSpanProcessor's worker), i.e. everything the process
# spends per operation.
#   cargo build --release && ./bench.sh [CASE...]   (in testbeds/bench/telemetry)
set -euo pipefail
cd "$(dirname "$0")"
BIN=${BIN:-target/release/telemetry-bench}
CASES=("$@")
[ ${#CASES[@]} -gt 0 ] || CASES=(metrics-hand metrics-prom metrics-prom-arc span-hand span-otel span-otel-parent encode-hand encode-prom encode-prom-om)
out=$(mktemp -d)
count() { # case n -> "main all"
  local dir="$out/$1-$2"; mkdir -p "$dir"
  valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file="$dir/cg.out" \
    "$BIN" one "$1" "$2" >/dev/null 2>"$dir/log"
  local main all
  main=$(grep -h '^totals:' "$dir"/cg.out-01 | awk '{print $2}')
  all=$(grep -h '^totals:' "$dir"/cg.out-* | awk '{s+=$2} END {print s}')
  echo "$main $all"
}
printf "%-18s %14s %14s\n" case "thread-1 Ir/op" "all Ir/op"
for c in "${CASES[@]}"; do
  case $c in
    metrics-*) n1=10000; n2=110000 ;;
    span-*) n1=5120; n2=56320 ;;
    encode-*) n1=2; n2=12 ;;
  esac
  read -r m1 a1 < <(count "$c" $n1)
  read -r m2 a2 < <(count "$c" $n2)
  awk -v c="$c" -v m1="$m1" -v m2="$m2" -v a1="$a1" -v a2="$a2" -v d=$((n2 - n1)) \
    'BEGIN { printf "%-18s %14.0f %14.0f\n", c, (m2 - m1) / d, (a2 - a1) / d }'
done
rm -rf "$out"
