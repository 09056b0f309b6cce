#!/usr/bin/env bash
# An upload's storage path into S3-compatible object storage against the local data directory
# (issue 14): the same generated CSV parsed, validated, encrypted and committed into each,
# alternating, with medians and the time ratio.
#
#   bash bench/upload-s3.sh [ROWS] [RUNS]        (defaults: 10000000 rows, 3 runs)
#
# The S3 server is s3s-fs on loopback, storing objects as files on the same disk as the local
# directory, built in release mode here (the tests' copy is a debug build); so the ratio is
# the cost of the object-store path (HTTP, SigV4 signing, multipart) rather than of a network.
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${1:-10000000}
RUNS=${2:-3}
OUT=${BENCH_OUT:-bench/out}
mkdir -p "$OUT"
S3_VERSION=0.14.1
TOOLS=${CLEANROOM_S3_BENCH_TOOLS:-$HOME/.cache/cleanroom-ci/s3s-fs-$S3_VERSION-release}
[ -x "$TOOLS/bin/s3s-fs" ] || cargo install -q s3s-fs --version "=$S3_VERSION" --features binary --locked --root "$TOOLS"
ROOT="$OUT/s3-root"; rm -rf "$ROOT"; mkdir -p "$ROOT/bench"
PORT=${BENCH_S3_PORT:-8015}
"$TOOLS/bin/s3s-fs" --host 127.0.0.1 --port "$PORT" --access-key bench --secret-key bench-secret "$ROOT" \
  >"$OUT/s3s.log" 2>&1 &
S3_PID=$!
trap 'kill $S3_PID 2>/dev/null || true; rm -rf "$ROOT"' EXIT
for _ in $(seq 1 60); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.5; done
cargo build --release -q -p cleanroom-objstore --example upload_bench
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg); $(date -u +%Y-%m-%dT%H:%MZ)"
AWS_ENDPOINT=http://127.0.0.1:$PORT AWS_ALLOW_HTTP=true AWS_REGION=us-east-1 \
AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret CLEANROOM_TEST_S3=s3://bench/up \
BENCH_LOCAL_DIR="$OUT" \
  /usr/bin/time -f "peak RSS %M KiB" "${CARGO_TARGET_DIR:-target}/release/examples/upload_bench" "$ROWS" "$RUNS"
