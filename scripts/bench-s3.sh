#!/usr/bin/env bash
# Times a first backup of the 1 GiB bench tree to a local directory and to
# a MinIO server on loopback (interleaved, 2 rounds), reports what an
# unchanged second backup moved to and from each repository, and times a
# restore of it from each (into tmpfs when /dev/shm is one, as bench.sh does).
# Needs the dataset of `BENCH_SIZE_MB=1024 BENCH_FILES=20000 BENCH_PG_SCALE=0
# BENCH_DIR=/tmp/cairn-bench-1g scripts/bench.sh` (or BENCH_DIR pointing at
# another bench.sh work dir) and .cache/testbin/minio (make test builds it).
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH_DIR=${BENCH_DIR:-/tmp/cairn-bench-1g}
tree=$BENCH_DIR/data/night1
if [[ ! -d $tree ]]; then
	echo "$0: no dataset at $tree; scripts/bench.sh makes it (see the header of this script)" >&2
	exit 1
fi
make --no-print-directory build >/dev/null
T=$(mktemp -d /tmp/s3b.XXXX)
RESTORE=$T/restore
if [[ $(stat -f -c %T /dev/shm 2>/dev/null) == tmpfs ]]; then RESTORE=/dev/shm/cairn-bench-s3-restore; fi
minio_cleanup() { rm -rf "$T" "$RESTORE"; }
source scripts/minio.sh
minio_start "$T/minio"
export CAIRN_PASSWORD=bench-password
for round in 1 2; do
	for kind in local s3; do
		if [[ $kind == local ]]; then R=$T/local$round; else R=s3:$MINIO_URL/bench$round; fi
		export CAIRN_REPOSITORY=$R CAIRN_CACHE_DIR=$T/cache-$kind$round
		bin/cairn init -q
		sync
		/usr/bin/time -f "$kind round $round first: %e s wall %U u %S s %M KB" bin/cairn backup -q "$tree"
		bin/cairn backup --json "$tree" | tail -1 | python3 -c 'import json,sys; m=json.load(sys.stdin); print("  unchanged: %.2f s, read %d B, written %d B" % (m["duration_seconds"], m["repository_bytes_read"], m["repository_bytes_written"]))'
		/usr/bin/time -f "  snapshots: %e s" bin/cairn snapshots -q >/dev/null
		rm -rf "$RESTORE" && mkdir -p "$RESTORE" && sync
		/usr/bin/time -f "  restore: %e s wall %U u %S s %M KB" bin/cairn restore -q latest --target "$RESTORE"
		rm -rf "$RESTORE"
	done
done
