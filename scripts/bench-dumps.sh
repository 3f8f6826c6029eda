#!/usr/bin/env bash
# Backs up a PostgreSQL database on two nights with cairn (a cluster file
# with one postgres component) and with restic (pg_dump | restic backup
# --stdin), and prints each tool's repository growth on the second night.
#
#   scripts/bench-dumps.sh                                  # scale 30, 20,000 transactions, 2 rounds
#   BENCH_PG_SCALE=3 BENCH_PG_TX=2000 ROUNDS=1 scripts/bench-dumps.sh   # smoke run
#
# Knobs: BENCH_DIR (work dir, default /tmp/cairn-bench-dumps), BENCH_PG_SCALE
# (pgbench scale, default 30), BENCH_PG_TX (pgbench transactions between the
# nights, default 20000), ROUNDS (default 2).
#
# The database is built once: pgbench -i, a copy of it as it is then
# (night 1), BENCH_PG_TX transactions, a copy again (night 2). Every round
# backs up fresh copies of those two states, so every round's tools dump the
# same rows in the same order, and the growth of night 2 compares the tools
# on the same data.
#
# cairn's figures are those of `cairn backup --config`, pg_dump included
# (GNU time adds the CPU of the children it waits for, and its peak RSS is
# the largest of cairn and pg_dump); restic's are those of the whole
# pipeline, pg_dump included, the same way. A plain pg_dump to /dev/null is
# timed once on its own. cairn runs with TMPDIR set to an empty directory,
# and that directory and cairn's cache are sampled every 0.2 s: their largest
# size shows whether the dump was staged on disk.
set -euo pipefail
cd "$(dirname "$0")/.."

BENCH_DIR=${BENCH_DIR:-/tmp/cairn-bench-dumps}
BENCH_PG_SCALE=${BENCH_PG_SCALE:-30}
BENCH_PG_TX=${BENCH_PG_TX:-20000}
ROUNDS=${ROUNDS:-2}
PASSWORD=bench-password

log() { echo "bench-dumps: $*" >&2; }

make --no-print-directory build >/dev/null
CAIRN=$PWD/bin/cairn
command -v restic >/dev/null || { log "restic is needed (apt-get install restic)"; exit 1; }
[[ -x /usr/bin/time ]] || { log "GNU time (/usr/bin/time) is needed"; exit 1; }

work=$BENCH_DIR/work
rm -rf "$work"
mkdir -p "$work"

# --- PostgreSQL ------------------------------------------------------------------

# The same throwaway server as bench.sh's pg_dumps: as the postgres user when
# run as root, durability off.
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
if [[ -z $PG_BIN || ! -x $PG_BIN/postgres ]]; then
	log "PostgreSQL not found (apt-get install postgresql-15)"
	exit 1
fi
pg_tmp=$(mktemp -d /tmp/cairn-pg.XXXXXX)
chmod 755 "$pg_tmp"
as=()
if [[ $(id -u) -eq 0 ]]; then
	chown postgres:postgres "$pg_tmp"
	as=(runuser -u postgres --)
fi

pg_stop() { # stops the server and removes its files
	if [[ -f $pg_tmp/data/postmaster.pid ]]; then
		kill -INT "$(head -1 "$pg_tmp/data/postmaster.pid")" 2>/dev/null || true
	fi
	wait "$pg_pid" 2>/dev/null || true
	rm -rf "$pg_tmp"
}

free_port() {
	python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
port=$(free_port)
(cd "$pg_tmp" && "${as[@]}" "$PG_BIN/initdb" -D "$pg_tmp/data" -U postgres -A trust -E UTF8 \
	--locale=C.UTF-8 --no-sync --no-instructions >/dev/null)
(cd "$pg_tmp" && exec "${as[@]}" "$PG_BIN/postgres" -D "$pg_tmp/data" -p "$port" -k "$pg_tmp" \
	-c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
	-c full_page_writes=off >"$pg_tmp/log" 2>&1) &
pg_pid=$!
# A failing step below must not leave the server running.
trap pg_stop EXIT
for ((i = 0; ; i++)); do
	"$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres && break
	if ((i == 150)); then
		log "PostgreSQL did not start:"
		tail -5 "$pg_tmp/log" >&2
		exit 1
	fi
	sleep 0.2
done
pg=(-h 127.0.0.1 -p "$port" -U postgres)
dsn="postgres://postgres@127.0.0.1:$port/bench?sslmode=disable"

log "pgbench -i -s $BENCH_PG_SCALE"
"$PG_BIN/createdb" "${pg[@]}" work
"$PG_BIN/pgbench" "${pg[@]}" -q -i -s "$BENCH_PG_SCALE" work >/dev/null 2>&1
"$PG_BIN/createdb" "${pg[@]}" -T work night1
clients=4
log "pgbench -c $clients -t $((BENCH_PG_TX / clients)) ($BENCH_PG_TX transactions)"
"$PG_BIN/pgbench" "${pg[@]}" -n -c $clients -j 2 -t $((BENCH_PG_TX / clients)) work >/dev/null
"$PG_BIN/createdb" "${pg[@]}" -T work night2
"$PG_BIN/dropdb" "${pg[@]}" work

use_night() { # use_night N: database bench becomes a fresh copy of nightN
	"$PG_BIN/dropdb" "${pg[@]}" --if-exists bench 2>/dev/null
	"$PG_BIN/createdb" "${pg[@]}" -T "night$1" bench
}

# --- tools -----------------------------------------------------------------------

export CAIRN_REPOSITORY=$work/cairn-repo CAIRN_CACHE_DIR=$work/cairn-cache CAIRN_PASSWORD=$PASSWORD
export RESTIC_REPOSITORY=$work/restic-repo RESTIC_CACHE_DIR=$work/restic-cache RESTIC_PASSWORD=$PASSWORD
cat >"$work/cluster.yaml" <<EOF
cluster: bench
repository: $work/cairn-repo
password_env: CAIRN_PASSWORD
components:
  - name: db
    kind: postgres
    dsn: "$dsn"
EOF

results=$BENCH_DIR/results.tsv # tool night round wall cpu rss_kib repo_bytes tmpdir_max/cache_growth_max new_bytes
: >"$results"
rm -f "$BENCH_DIR/results.md"

# watch_disk OUT DIR: until killed, samples du -sb of DIR every 0.2 s and
# keeps the largest size in OUT.
watch_disk() {
	local out=$1 dir=$2 max=0 cur
	echo 0 >"$out"
	while :; do
		cur=$(du -sb "$dir" 2>/dev/null | cut -f1)
		if ((${cur:-0} > max)); then
			max=$cur
			echo "$max" >"$out"
		fi
		sleep 0.2
	done
}

# run_night TOOL NIGHT ROUND CMD...: runs CMD under /usr/bin/time and records it.
run_night() {
	local tool=$1 night=$2 round=$3
	shift 3
	local tf=$work/time.txt staged=- watchers=()
	sync
	if [[ $tool == cairn ]]; then
		# The cache holds what the run saves (index, snapshot); a staged
		# dump would show in it or in TMPDIR.
		local cache0
		rm -rf "$work/tmp" && mkdir -p "$work/tmp" "$CAIRN_CACHE_DIR"
		cache0=$(du -sb "$CAIRN_CACHE_DIR" | cut -f1)
		watch_disk "$work/tmp.max" "$work/tmp" &
		watchers+=($!)
		watch_disk "$work/cache.max" "$CAIRN_CACHE_DIR" &
		watchers+=($!)
	fi
	if ! TMPDIR=$work/tmp /usr/bin/time -f '%e %U %S %M' -o "$tf" "$@" >"$work/out.txt" 2>"$work/err.txt"; then
		((${#watchers[@]} == 0)) || kill "${watchers[@]}"
		log "$tool night $night failed: $*"
		tail -5 "$work/err.txt" >&2
		exit 1
	fi
	if ((${#watchers[@]} > 0)); then
		kill "${watchers[@]}"
		wait "${watchers[@]}" 2>/dev/null || true
		# TMPDIR's largest size, and the cache's largest growth over its
		# size before the run.
		local grew=$(($(cat "$work/cache.max") - cache0))
		((grew > 0)) || grew=0
		staged="$(cat "$work/tmp.max")/$grew"
	fi
	local wall user sys rss size added
	read -r wall user sys rss < <(tail -1 "$tf")
	size=$(du -sb "$work/$tool-repo" | cut -f1)
	# The bytes of the dump that were new to the repository, before
	# compression: what deduplication left to store.
	case $tool in
	cairn) added=$("$CAIRN" snapshots --json --latest 1 | python3 -c 'import json, sys; print(max(json.load(sys.stdin), key=lambda s: s["time"])["summary"]["data_added"])') ;;
	restic) added=$(python3 -c 'import json, sys; print([json.loads(l) for l in sys.stdin if l.startswith("{")][-1]["data_added"])' <"$work/out.txt") ;;
	esac
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$tool" "$night" "$round" "$wall" \
		"$(awk "BEGIN{print $user + $sys}")" "$rss" "$size" "$staged" "$added" >>"$results"
	printf '  %-6s night %s  wall %7.2f s  cpu %7.2f s  rss %5d MiB  repo %8.1f MiB  tmp/cache max %s B  new %d MiB\n' \
		"$tool" "$night" "$wall" "$(awk "BEGIN{print $user + $sys}")" $((rss / 1024)) \
		"$(awk "BEGIN{print $size / 1048576}")" "$staged" $((added >> 20)) >&2
}

backup() { # backup TOOL NIGHT ROUND
	local tool=$1 night=$2 round=$3
	case $tool in
	cairn) run_night cairn "$night" "$round" "$CAIRN" backup -q --config "$work/cluster.yaml" ;;
	restic) run_night restic "$night" "$round" bash -c 'set -o pipefail; "$1" "${@:2}" | restic backup --json --stdin --stdin-filename dump.sql' \
		- "$PG_BIN/pg_dump" "${pg[@]}" -d bench ;;
	esac
}

# unrestricted FILE: the dump without its \restrict and \unrestrict lines,
# whose key is new in every dump.
unrestricted() { grep -v -e '^\\restrict' -e '^\\unrestrict' "$1"; }

# pg_dump on its own, once: what the dump costs without a backup tool.
use_night 1
sync
/usr/bin/time -f '%e %U %S %M' -o "$work/time.txt" "$PG_BIN/pg_dump" "${pg[@]}" -d bench -f /dev/null
read -r pd_wall pd_user pd_sys pd_rss < <(tail -1 "$work/time.txt")
pd_cpu=$(awk "BEGIN{print $pd_user + $pd_sys}")
dump_bytes=$("$PG_BIN/pg_dump" "${pg[@]}" -d bench | wc -c)
log "pg_dump alone: ${pd_wall} s wall, ${pd_cpu} s CPU, $((pd_rss / 1024)) MiB RSS, dump $((dump_bytes >> 20)) MiB"

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for round in $(seq 1 "$ROUNDS"); do
	log "round $round of $ROUNDS"
	rm -rf "$work/cairn-repo" "$work/cairn-cache" "$work/restic-repo" "$work/restic-cache"
	"$CAIRN" init -q
	restic init -q >/dev/null
	for night in 1 2; do
		use_night "$night"
		backup cairn "$night" "$round"
		backup restic "$night" "$round"
	done
	if ((round == 1)); then
		# What cairn restores is the dump pg_dump gives of the same data.
		rm -rf "$work/restore" && mkdir -p "$work/restore"
		"$CAIRN" restore latest --target "$work/restore" -q
		got=$(find "$work/restore" -name dump.sql)
		"$PG_BIN/pg_dump" "${pg[@]}" -d bench -f "$work/fresh.sql"
		if ! cmp <(unrestricted "$got") <(unrestricted "$work/fresh.sql"); then
			log "cairn's restored dump differs from a fresh pg_dump"
			exit 1
		fi
		log "restored dump.sql equals a fresh pg_dump ($(wc -c <"$work/fresh.sql") bytes, \\restrict lines aside)"
		rm -rf "$work/restore" "$work/fresh.sql"
	fi
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
pg_stop
trap - EXIT

# --- report ------------------------------------------------------------------

report=$BENCH_DIR/results.md
note="pgbench scale $BENCH_PG_SCALE, $BENCH_PG_TX transactions between the nights; plain SQL dump of $((dump_bytes >> 20)) MiB; medians of $ROUNDS round(s). pg_dump alone to /dev/null: $pd_wall s wall, $pd_cpu s CPU, $((pd_rss / 1024)) MiB peak RSS. Load average (1, 5, 15 min) before the rounds: $load_before; after: $load_after."
python3 - "$results" "$report" "$note" <<'PY'
import statistics, sys
path, out, note = sys.argv[1:4]
rows = [l.rstrip("\n").split("\t") for l in open(path) if l.strip()]
MiB = 2**20
def med(tool, night, i):
    return statistics.median(float(r[i]) for r in rows if r[0] == tool and r[1] == night)
def growth(tool):
    by = {(r[1], r[2]): float(r[6]) for r in rows if r[0] == tool}
    return [(by["2", k] - by["1", k]) / MiB for (n, k) in by if n == "1" and ("2", k) in by]
lines = [note, "",
         "| tool | night | wall s | CPU s | peak RSS MiB | repo after, MiB | growth, MiB | new data before compression, MiB | TMPDIR max / cache growth max, bytes |",
         "|---|---|---|---|---|---|---|---|---|"]
for tool in ("cairn", "restic"):
    for night in ("1", "2"):
        repo = med(tool, night, 6) / MiB
        g = repo if night == "1" else statistics.median(growth(tool))
        staged = [r[7] for r in rows if r[0] == tool and r[1] == night]
        st = "-"
        if staged[0] != "-":
            tmax = max(int(s.split("/")[0]) for s in staged)
            cmax = max(int(s.split("/")[1]) for s in staged)
            st = f"{tmax} / {cmax}"
        lines.append(f"| {tool} | {night} | {med(tool, night, 3):.2f} | {med(tool, night, 4):.2f} | "
                     f"{med(tool, night, 5) / 1024:.0f} | {repo:.2f} | {g:.2f} | {med(tool, night, 8) / MiB:.1f} | {st} |")
c, r = statistics.median(growth("cairn")), statistics.median(growth("restic"))
verdict = "no larger than" if c <= r else "LARGER than"
lines += ["", f"Night-2 growth: cairn {c:.2f} MiB, restic {r:.2f} MiB (per round: cairn "
          + ", ".join(f"{g:.2f}" for g in growth("cairn")) + "; restic "
          + ", ".join(f"{g:.2f}" for g in growth("restic")) + f"): cairn's is {verdict} restic's."]
text = "\n".join(lines) + "\n"
open(out, "w").write(text)
print(text)
PY
log "table written to $report"
