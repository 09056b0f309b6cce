#!/usr/bin/env bash
# An overlap-by-dimension query on two encrypted datasets, through the privacy layer (check,
# bounding, exact thresholds, private group selection, noise) and as the same aggregate on plain
# DataFusion over the same encrypted tables, side by side; the privacy layer both as served
# (statistics skip bounding that cannot remove a row) and with bounding forced. Each run is its
# own process, so its peak memory (VmHWM) is its own.
#
#   bash bench/query.sh [ROWS ...]          (default: 1000000 10000000; RUNS=3)
#
# Data is generated once per size under bench/out (two datasets of ROWS people, 35 % shared,
# 64-hex-digit join keys, 8 regions), encrypted as the server stores it.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
OUT=${BENCH_OUT:-bench/out}
SIZES=("$@")
[ ${#SIZES[@]} -gt 0 ] || SIZES=(1000000 10000000)
mkdir -p "$OUT"
cargo build --release -q -p cleanroom-query --example overlap_bench
BIN=target/release/examples/overlap_bench
RESULTS="$OUT/query-results.jsonl"
: > "$RESULTS"
for rows in "${SIZES[@]}"; do
  DIR="$OUT/overlap-$rows"
  if [ ! -f "$DIR/ids" ]; then
    rm -rf "$DIR"
    echo "generating $rows x $rows ..." >&2
    "$BIN" generate "$DIR" "$rows"
  fi
  for run in $(seq 1 "$RUNS"); do
    for mode in private bounded plain; do
      line=$("$BIN" run "$DIR" "$mode")
      echo "$rows $line" | tee -a "$RESULTS" >&2
    done
  done
done
python3 - "$RESULTS" <<'PY'
import json, statistics, sys, collections
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    rows, js = line.split(" ", 1)
    r = json.loads(js)
    runs[(int(rows), r["mode"])].append(r)
print("| rows per dataset | privacy layer (as served) | privacy layer, bounding forced | plain DataFusion | ratio served / plain | ratio forced / plain | peak RSS served / forced / plain | first-analysis statistics |")
print("|---|---|---|---|---|---|---|---|")
med = statistics.median
for rows in sorted({k[0] for k in runs}):
    p, b, q = runs[(rows, "private")], runs[(rows, "bounded")], runs[(rows, "plain")]
    mp, mb, mq = (med(r["seconds"] for r in x) for x in (p, b, q))
    rss = " / ".join(f"{med(r['peak_rss_mib'] for r in x):.0f}" for x in (p, b, q))
    print(f"| {rows:,} | {mp:.2f} s | {mb:.2f} s | {mq:.2f} s | {mp/mq:.2f}x | {mb/mq:.2f}x | {rss} MiB | {med(r['stats_seconds'] for r in p):.2f} s |")
PY
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "date: $(date -u +%Y-%m-%d)"
