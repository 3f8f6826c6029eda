# Sourced by the benchmark scripts that need an S3 server: starts
# .cache/testbin/minio (make test builds it) on a free loopback port with its
# data under $1, waits until it answers, and stops it when the script exits.
# Sets MINIO_URL and exports the credentials cairn reads.
minio_start() {
	local dir=$1 bin=.cache/testbin/minio port console i
	if [[ ! -x $bin ]]; then
		echo "$0: $bin is missing (make test builds it)" >&2
		exit 1
	fi
	read -r port console < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(2)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in ss))')
	mkdir -p "$dir"
	MINIO_ROOT_USER=benchaccess MINIO_ROOT_PASSWORD=benchsecret123 MINIO_BROWSER=off MINIO_UPDATE=off \
		"$bin" server --quiet --address "127.0.0.1:$port" --console-address "127.0.0.1:$console" "$dir/data" >"$dir/log" 2>&1 &
	MINIO_PID=$!
	trap 'kill $MINIO_PID 2>/dev/null; wait $MINIO_PID 2>/dev/null; minio_cleanup' EXIT
	MINIO_URL=http://127.0.0.1:$port
	for ((i = 0; i < 300; i++)); do
		curl -sf "$MINIO_URL/minio/health/ready" >/dev/null && break
		if ! kill -0 "$MINIO_PID" 2>/dev/null; then
			echo "$0: minio exited: $(tail -1 "$dir/log")" >&2
			exit 1
		fi
		sleep 0.1
	done
	curl -sf "$MINIO_URL/minio/health/ready" >/dev/null || {
		echo "$0: minio did not answer on $MINIO_URL within 30 s" >&2
		exit 1
	}
	export AWS_ACCESS_KEY_ID=benchaccess AWS_SECRET_ACCESS_KEY=benchsecret123
}
# A caller may define minio_cleanup before sourcing, to remove its own files
# once minio has stopped.
declare -F minio_cleanup >/dev/null || minio_cleanup() { :; }
