#!/usr/bin/env bash
# The overlap of bench/query.sh through the privacy layer, in one process against a Ballista
# cluster of separate processes on this machine (a scheduler and EXECUTORS executors of
# TASKS tasks each; mutual TLS on loopback; shuffle files in /dev/shm), interleaved run by
# run, on the same encrypted datasets. Reports medians: time of the query and of the
# first-analysis statistics, peak memory per process (VmHWM), bytes of shuffle files.
#
#   bash bench/cluster.sh [ROWS ...]        (default: 10000000; RUNS=3 EXECUTORS=2 TASKS=1)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
EXECUTORS=${EXECUTORS:-2}
TASKS=${TASKS:-1}
OUT=${BENCH_OUT:-bench/out}
SIZES=("$@")
[ ${#SIZES[@]} -gt 0 ] || SIZES=(10000000)
mkdir -p "$OUT"
cargo build --release -q -p cleanroom-query --example overlap_bench
cargo build --release -q -p cleanroom-cluster --example cluster_bench
GEN=target/release/examples/overlap_bench
BIN=target/release/examples/cluster_bench
RESULTS="$OUT/cluster-results.jsonl"
: > "$RESULTS"
for rows in "${SIZES[@]}"; do
  DIR="$OUT/overlap-$rows"
  if [ ! -f "$DIR/ids" ]; then
    rm -rf "$DIR"
    echo "generating $rows x $rows ..." >&2
    "$GEN" generate "$DIR" "$rows"
  fi
  for run in $(seq 1 "$RUNS"); do
    for mode in in-process cluster; do
      line=$("$BIN" run "$DIR" "$mode" "$EXECUTORS" "$TASKS" 2>>"$OUT/cluster-stderr.log")
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
med = statistics.median
print("| rows per dataset | engine | query | ratio to in-process | first-analysis statistics | peak RSS server / scheduler / executors | shuffle files, query | shuffle files, statistics |")
print("|---|---|---:|---:|---:|---|---:|---:|")
for rows in sorted({k[0] for k in runs}):
    base = med(r["seconds"] for r in runs[(rows, "in-process")])
    for mode in ("in-process", "cluster"):
        x = runs[(rows, mode)]
        if not x:
            continue
        q = med(r["seconds"] for r in x)
        st = med(r["stats_seconds"] for r in x)
        ex = x[0]["executor_rss_mib"]
        execs = " / ".join(f"{med(r['executor_rss_mib'][i] for r in x):.0f}" for i in range(len(ex)))
        rss = f"{med(r['server_rss_mib'] for r in x):.0f}"
        if mode == "cluster":
            rss += f" / {med(r['scheduler_rss_mib'] for r in x):.0f} / {execs}"
        qb = med(r["shuffle_bytes_query"] for r in x) / 2**20
        sb = med(r["shuffle_bytes_stats"] for r in x) / 2**20
        print(f"| {rows:,} | {mode} | {q:.2f} s | {q/base:.2f}x | {st:.2f} s | {rss} MiB | {qb:,.0f} MiB | {sb:,.0f} MiB |")
PY
echo "runs: $RUNS per engine, interleaved; cluster: $EXECUTORS executors x $TASKS tasks"
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "date: $(date -u +%Y-%m-%dT%H:%M)Z"
