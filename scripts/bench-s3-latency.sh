#!/usr/bin/env bash
# Restores from a MinIO server on loopback reached through scripts/latproxy,
# which holds every request back by DELAY (default 10ms), with the default
# number of restore workers and with --connections CONNECTIONS (default 16),
# interleaved, 2 rounds. SRC (default: the speed dataset's real files) is
# backed up first. Needs .cache/testbin/minio (make test builds it).
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=${SRC:-/tmp/cairn-bench/data/night1/real}
DELAY=${DELAY:-10ms}
CONNECTIONS=${CONNECTIONS:-16}
if [[ ! -d $SRC ]]; then
	echo "$0: no directory $SRC; scripts/bench.sh makes the dataset, or set SRC" >&2
	exit 1
fi
make --no-print-directory build >/dev/null
T=$(mktemp -d /tmp/s3l.XXXX)
RESTORE=$T/restore
if [[ $(stat -f -c %T /dev/shm 2>/dev/null) == tmpfs ]]; then RESTORE=/dev/shm/cairn-bench-s3l-restore; fi
go build -o "$T/latproxy" ./scripts/latproxy
PROXY_PID=
minio_cleanup() {
	[[ -z $PROXY_PID ]] || kill "$PROXY_PID" 2>/dev/null || true
	rm -rf "$T" "$RESTORE"
}
source scripts/minio.sh
minio_start "$T/minio"
"$T/latproxy" -to "${MINIO_URL#http://}" -delay "$DELAY" >"$T/proxy" &
PROXY_PID=$!
for ((i = 0; i < 50; i++)); do [[ -s $T/proxy ]] && break; sleep 0.1; done
export CAIRN_PASSWORD=bench-password CAIRN_REPOSITORY=s3:$MINIO_URL/bench CAIRN_CACHE_DIR=$T/cache
bin/cairn init -q
bin/cairn backup -q "$SRC"
export CAIRN_REPOSITORY=s3:http://$(head -1 "$T/proxy")/bench
for round in 1 2; do
	for n in default "$CONNECTIONS"; do
		args=()
		[[ $n != default ]] && args=(--connections "$n")
		rm -rf "$RESTORE" && mkdir -p "$RESTORE" && sync
		/usr/bin/time -f "round $round, workers $n: %e s wall %U u %S s %M KB" \
			bin/cairn "${args[@]}" restore -q latest --target "$RESTORE"
	done
done
