#!/usr/bin/env bash
# Times a first backup of the 1 GiB bench tree to a local directory and to
# a MinIO server on loopback (interleaved, 2 rounds), and reports what an
# unchanged second backup moved to and from each repository.
# Needs the dataset of `BENCH_SIZE_MB=1024 BENCH_FILES=20000 BENCH_PG_SCALE=0
# BENCH_DIR=/tmp/cairn-bench-1g scripts/bench.sh` and .cache/testbin/minio
# (make test builds it).
set -euo pipefail
cd "$(dirname "$0")/.."
make --no-print-directory build >/dev/null
T=$(mktemp -d /tmp/s3b.XXXX)
export MINIO_ROOT_USER=benchaccess MINIO_ROOT_PASSWORD=benchsecret123 MINIO_BROWSER=off MINIO_UPDATE=off
.cache/testbin/minio server --quiet --address 127.0.0.1:19100 --console-address 127.0.0.1:19101 $T/data >$T/log 2>&1 &
MP=$!
sleep 3
export AWS_ACCESS_KEY_ID=benchaccess AWS_SECRET_ACCESS_KEY=benchsecret123 CAIRN_PASSWORD=x
tree=/tmp/cairn-bench-1g/tree
mv /tmp/cairn-bench-1g/data/night1 $tree
for round in 1 2; do
  for kind in local s3; do
    if [[ $kind == local ]]; then R=$T/local$round; else R=s3:http://127.0.0.1:19100/bench$round; fi
    export CAIRN_REPOSITORY=$R CAIRN_CACHE_DIR=$T/cache-$kind$round
    bin/cairn init -q
    sync
    /usr/bin/time -f "$kind round $round first: %e s wall %U u %S s %M KB" bin/cairn backup -q $tree
    bin/cairn backup --json $tree | tail -1 | python3 -c 'import json,sys; m=json.load(sys.stdin); print("  unchanged: %.2f s, read %d B, written %d B" % (m["duration_seconds"], m["repository_bytes_read"], m["repository_bytes_written"]))'
    /usr/bin/time -f "  snapshots: %e s" bin/cairn snapshots -q >/dev/null
  done
done
mv $tree /tmp/cairn-bench-1g/data/night1
kill $MP; wait $MP || true
rm -rf $T
