#!/usr/bin/env bash
# Times `cairn snapshots` on repositories holding many snapshots: a local
# directory and a MinIO server on loopback, each with a cold cache (a new
# cache directory) and a warm one (the same command again), 5 runs each,
# medians. The snapshots are nightly backups of a small tree, made with
# --time, 4 at once.
#
#   scripts/bench-snapshots.sh          # 1,000 snapshots
#   SNAPSHOTS=200 scripts/bench-snapshots.sh
#
# Needs .cache/testbin/minio (make test builds it); see scripts/minio.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
SNAPSHOTS=${SNAPSHOTS:-1000}
make --no-print-directory build >/dev/null
CAIRN=$PWD/bin/cairn
T=$(mktemp -d /tmp/snapb.XXXX)
minio_cleanup() { rm -rf "$T"; }
source scripts/minio.sh
minio_start "$T/minio"
export CAIRN_PASSWORD=bench-password

mkdir -p "$T/src/etc"
for i in $(seq 1 20); do head -c 4096 /dev/urandom >"$T/src/etc/f$i"; done

median() { sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
# timed LABEL CMD...: 5 runs, prints the median wall time in seconds.
timed() {
	local label=$1 i
	shift
	for i in 1 2 3 4 5; do
		/usr/bin/time -f %e -o "$T/t" "$@" >/dev/null
		cat "$T/t"
	done | median | sed "s/^/$label: /;s/$/ s/"
}

for kind in local s3; do
	if [[ $kind == local ]]; then R=$T/repo; else R=s3:$MINIO_URL/snapbench; fi
	export CAIRN_REPOSITORY=$R CAIRN_CACHE_DIR=$T/cache-$kind
	"$CAIRN" init -q
	start=$(date +%s)
	seq 0 $((SNAPSHOTS - 1)) | xargs -P 4 -I{} sh -c \
		'"$0" backup -q --time "$(date -u -d "2024-01-01 +{} days" "+%Y-%m-%d 03:00:00")" "$1"' "$CAIRN" "$T/src"
	n=$("$CAIRN" snapshots --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
	echo "$kind: $n snapshots made in $(($(date +%s) - start)) s"
	# Cold: a new cache directory every run; warm: the one just filled.
	timed "$kind snapshots, cold cache" sh -c 'CAIRN_CACHE_DIR=$(mktemp -d '"$T"'/cold.XXXX) exec "$0" snapshots' "$CAIRN"
	"$CAIRN" snapshots >/dev/null
	timed "$kind snapshots, warm cache" "$CAIRN" snapshots
done
