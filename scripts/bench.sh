#!/usr/bin/env bash
# Times cairn against restic (and borg when present) on the same generated
# data, interleaved, ROUNDS rounds, and prints medians and ratios.
#
#   scripts/bench.sh                          # 1.6 GB / 65k files + a database dump, 3 rounds
#   BENCH_SIZE_MB=1024 BENCH_FILES=20000 BENCH_PG_SCALE=0 scripts/bench.sh   # 1 GiB / 20k files
#   BENCH_SIZE_MB=100 BENCH_FILES=2000 ROUNDS=1 scripts/bench.sh   # smoke run (~10 MB dump)
#
# Knobs: BENCH_DIR (work dir, default /tmp/cairn-bench; datasets are reused
# while their parameters match), BENCH_SIZE_MB, BENCH_FILES, ROUNDS,
# BENCH_TOOLS (default "cairn restic borg"; a missing peer is installed from
# Debian when possible, else left out), BENCH_SRC (real files to copy, comma
# separated), BENCH_PG_SCALE (pgbench scale of the database whose plain SQL
# dump joins the tree; default 30 at 1600 MiB and proportional to
# BENCH_SIZE_MB; 0 for none) and BENCH_PG_TX (pgbench transactions between
# the two nights' dumps, default 20000 at scale 30, proportional to it).
# Runs are warm-cache: the machine's page cache is not dropped, dirty pages
# are synced before every step, and the source is read once before every
# backup and the repository before every restore (untimed), since a kernel
# with proactive reclaim (DAMON's kdamond) evicts files left idle.
#
# Steps, each on a fresh repository per round and tool:
#   first      first backup of the tree
#   unchanged  second backup of the same tree
#   night2     backup after ~3% of the files changed and 50 were added
#   restore    restore of the night-2 snapshot into an empty directory on
#              tmpfs (BENCH_RESTORE_DIR, default /dev/shm/cairn-bench-restore
#              when /dev/shm is a tmpfs), so that the disk's writeback does
#              not decide the figure
#   shift0     backup of a 200 MiB random file
#   shift1     backup of the same file with 1 byte inserted at the start
#              and 10 in the middle (growth shows dedup of shifted data)
set -euo pipefail
cd "$(dirname "$0")/.."

BENCH_DIR=${BENCH_DIR:-/tmp/cairn-bench}
BENCH_SIZE_MB=${BENCH_SIZE_MB:-1600}
BENCH_FILES=${BENCH_FILES:-65000}
# The dump keeps its share of the tree at any size, so a smoke run stays small.
BENCH_PG_SCALE=${BENCH_PG_SCALE:-$((BENCH_SIZE_MB * 30 / 1600))}
BENCH_PG_TX=${BENCH_PG_TX:-$((BENCH_PG_SCALE * 20000 / 30))}
ROUNDS=${ROUNDS:-3}
BENCH_TOOLS=${BENCH_TOOLS:-"cairn restic borg"}
BENCH_SRC=${BENCH_SRC:-/usr/share,/usr/lib,/usr/local/go,$HOME/go/pkg/mod}
SHIFT_MB=200
PASSWORD=bench-password

log() { echo "bench: $*" >&2; }

# --- tools -------------------------------------------------------------------

make --no-print-directory build >/dev/null
CAIRN=$PWD/bin/cairn

apt_install() {
	[[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null || return 1
	local apt=(env DEBIAN_FRONTEND=noninteractive apt-get -q -y -o DPkg::Lock::Timeout=600)
	log "installing $*"
	# A fresh machine may have no package lists yet: update once, then retry.
	"${apt[@]}" install --no-install-recommends "$@" >/dev/null 2>&1 ||
		{ "${apt[@]}" update >/dev/null 2>&1 &&
			"${apt[@]}" install --no-install-recommends "$@" >/dev/null 2>&1; }
}
[[ -x /usr/bin/time ]] || apt_install time || { log "GNU time (/usr/bin/time) is needed"; exit 1; }
tools=()
for t in $BENCH_TOOLS; do
	case $t in
	cairn) tools+=(cairn) ;;
	restic) { command -v restic >/dev/null || apt_install restic; } && tools+=(restic) || log "restic unavailable: left out" ;;
	borg) { command -v borg >/dev/null || apt_install borgbackup; } && tools+=(borg) || log "borg unavailable: left out" ;;
	*) log "unknown tool $t"; exit 1 ;;
	esac
done

# --- datasets ----------------------------------------------------------------

# pg_dumps DIR: a pgbench database of BENCH_PG_SCALE dumped as plain SQL to
# DIR/pg1.sql, then again after BENCH_PG_TX transactions to DIR/pg2.sql, on a
# throwaway PostgreSQL (as the postgres user when run as root).
pg_dumps() {
	local dir=$1 bin tmp port as=()
	bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
	if [[ -z $bin || ! -x $bin/postgres ]]; then
		log "PostgreSQL not found: the dataset has no database dump"
		return 0
	fi
	tmp=$(mktemp -d /tmp/cairn-pg.XXXXXX)
	chmod 755 "$tmp"
	if [[ $(id -u) -eq 0 ]]; then
		chown postgres:postgres "$tmp"
		as=(runuser -u postgres --)
	fi
	port=$((20000 + RANDOM % 20000))
	(cd "$tmp" && "${as[@]}" "$bin/initdb" -D "$tmp/data" -U postgres -A trust -E UTF8 \
		--locale=C.UTF-8 --no-sync --no-instructions >/dev/null)
	(cd "$tmp" && exec "${as[@]}" "$bin/postgres" -D "$tmp/data" -p "$port" -k "$tmp" \
		-c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
		-c full_page_writes=off >"$tmp/log" 2>&1) &
	# A failing step below must not leave the server running.
	trap "pg_stop $(printf %q "$tmp")" EXIT
	local i
	for ((i = 0; ; i++)); do
		"$bin/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres && break
		if ((i == 150)); then
			log "PostgreSQL did not start:"
			tail -5 "$tmp/log" >&2
			exit 1
		fi
		sleep 0.2
	done
	local pg=(-h 127.0.0.1 -p "$port" -U postgres)
	"$bin/createdb" "${pg[@]}" bench
	"$bin/pgbench" "${pg[@]}" -q -i -s "$BENCH_PG_SCALE" bench >/dev/null 2>&1
	"$bin/pg_dump" "${pg[@]}" -d bench -f "$dir/pg1.sql"
	"$bin/pgbench" "${pg[@]}" -n -c 2 -j 2 -t $((BENCH_PG_TX / 2)) bench >/dev/null
	"$bin/pg_dump" "${pg[@]}" -d bench -f "$dir/pg2.sql"
	pg_stop "$tmp"
	trap - EXIT
}

pg_stop() { # pg_stop TMP: stops the server of pg_dumps and removes its files
	local tmp=$1
	if [[ -f $tmp/data/postmaster.pid ]]; then
		kill -INT "$(head -1 "$tmp/data/postmaster.pid")" 2>/dev/null || true
	fi
	wait
	rm -rf "$tmp"
}

data=$BENCH_DIR/data
params="size=$BENCH_SIZE_MB files=$BENCH_FILES src=$BENCH_SRC pg=$BENCH_PG_SCALE/$BENCH_PG_TX"
if [[ $(cat "$data/params" 2>/dev/null) != "$params" ]]; then
	log "generating datasets in $data ($params)"
	rm -rf "$data"
	mkdir -p "$data"
	go run ./scripts/gendata tree -dst "$data/night1" -files "$BENCH_FILES" -mb "$BENCH_SIZE_MB" -src "$BENCH_SRC"
	if ((BENCH_PG_SCALE > 0)); then
		pg_dumps "$data"
	fi
	go run ./scripts/gendata night2 -src "$data/night1" -dst "$data/night2" -percent 3 -seed 2
	if [[ -f $data/pg1.sql ]]; then
		# Both nights hold the dump at the same path: night 2's is the later one.
		mkdir -p "$data/night1/db" "$data/night2/db"
		mv "$data/pg1.sql" "$data/night1/db/bench.sql"
		mv "$data/pg2.sql" "$data/night2/db/bench.sql"
		log "database dumps: $(du -h "$data/night1/db/bench.sql" | cut -f1), $(du -h "$data/night2/db/bench.sql" | cut -f1)"
	fi
	go run ./scripts/gendata random -dst "$data/shift0/big.bin" -mb $SHIFT_MB -seed 3
	go run ./scripts/gendata shift -src "$data/shift0/big.bin" -dst "$data/shift1/big.bin"
	echo "$params" >"$data/params"
fi
# Each tool backs up one path, "tree" or "shift", so that its second night
# finds the first night's snapshot as parent; the nights are swapped in by
# renaming their directories, which keeps every file's inode and ctime.
tree=$BENCH_DIR/tree
shiftdir=$BENCH_DIR/shift
swap_in() { # swap_in PLACE NAME: PLACE becomes data/NAME; what was there goes back
	local place=$1 name=$2
	if [[ -e $place ]]; then
		mv -T "$place" "$data/$(cat "$place.name")"
	fi
	mv -T "$data/$name" "$place"
	echo "$name" >"$place.name"
}
restore_data() {
	for place in "$tree" "$shiftdir"; do
		[[ -e $place ]] && mv -T "$place" "$data/$(cat "$place.name")"
		rm -f "$place.name"
	done
	return 0
}
trap restore_data EXIT
restore_data

# --- one timed step ------------------------------------------------------------

RESTORE_DIR=${BENCH_RESTORE_DIR:-}
if [[ -z $RESTORE_DIR ]]; then
	RESTORE_DIR=$BENCH_DIR/work/restore
	[[ $(stat -f -c %T /dev/shm 2>/dev/null) == tmpfs ]] && RESTORE_DIR=/dev/shm/cairn-bench-restore
fi

results=$BENCH_DIR/results.tsv # tool step round wall cpu rss_kib repo_bytes
: >"$results"
# A failed run must not leave an earlier run's table looking current.
rm -f "$BENCH_DIR/results.md"
work=$BENCH_DIR/work

# run_step TOOL STEP ROUND CMD...: runs CMD under /usr/bin/time and records it.
run_step() {
	local tool=$1 step=$2 round=$3
	shift 3
	local tf=$work/time.txt
	# Earlier steps' dirty pages are written out first, so that no step
	# pays for another's writeback.
	sync
	if ! /usr/bin/time -f '%e %U %S %M' -o "$tf" "$@" >"$work/out.txt" 2>"$work/err.txt"; then
		log "$tool $step failed: $*"
		tail -5 "$work/err.txt" >&2
		exit 1
	fi
	local wall user sys rss size
	read -r wall user sys rss < <(tail -1 "$tf")
	size=0
	[[ -e $work/$tool-repo ]] && size=$(du -sb "$work/$tool-repo" | cut -f1)
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$tool" "$step" "$round" "$wall" \
		"$(awk "BEGIN{print $user + $sys}")" "$rss" "$size" >>"$results"
	printf '  %-6s %-9s wall %7.2f s  rss %5d MiB  repo %6d MiB\n' "$tool" "$step" "$wall" $((rss / 1024)) $((size >> 20)) >&2
}

# read_once PATH...: reads every file under PATH into the page cache
# (untimed), since proactive reclaim evicts files left idle.
read_once() {
	find "$@" -type f -print0 | xargs -0 cat >/dev/null
}

backup() { # backup TOOL STEP ROUND PATH
	local tool=$1 step=$2 round=$3 path=$4
	read_once "$path"
	case $tool in
	cairn) run_step "$tool" "$step" "$round" "$CAIRN" backup -q "$path" ;;
	restic) run_step "$tool" "$step" "$round" restic backup -q "$path" ;;
	borg) run_step "$tool" "$step" "$round" borg create "$work/borg-repo::$step-$round" "$path" ;;
	esac
}

restore() { # restore TOOL ROUND
	local tool=$1 round=$2 target=$RESTORE_DIR
	rm -rf "$target" && mkdir -p "$target"
	# As for backups, the input comes from the page cache: proactive reclaim
	# may have evicted packs written a minute ago.
	read_once "$work/$tool-repo" "$work/$tool-cache" 2>/dev/null
	case $tool in
	cairn) run_step "$tool" restore "$round" "$CAIRN" restore latest --target "$target" -q ;;
	restic) run_step "$tool" restore "$round" restic restore latest --target "$target" -q ;;
	borg) (cd "$target" && run_step "$tool" restore "$round" borg extract "$work/borg-repo::night2-$round") ;;
	esac
	local want got
	want=$(find "$tree" -type f | wc -l)
	got=$(find "$target" -type f | wc -l)
	if [[ $want != "$got" ]]; then
		log "$tool restore: $got files, want $want"
		exit 1
	fi
	rm -rf "$target"
}

# copy_floor ROUND: the night-2 tree copied into the restore directory by
# cp, one process per top-level directory, as many at once as there are
# cores. Writing the files is most of a restore on tmpfs, where the kernel
# fills every page anew (under a hypervisor, faulting each one in): no
# restore can beat this copy by much, so its time puts the restore's ratio
# in scale.
copy_floor() {
	local round=$1 target=$RESTORE_DIR
	rm -rf "$target" && mkdir -p "$target"
	read_once "$tree"
	run_step copy restore "$round" sh -c 'find "$1" -mindepth 1 -maxdepth 1 -print0 | xargs -0 -P "$2" -I{} cp -a {} "$3"/' \
		sh "$tree" "$(nproc)" "$target"
	rm -rf "$target"
}

init() { # init TOOL
	local tool=$1
	rm -rf "${work:?}/$tool-repo" "$work/$tool-cache"
	case $tool in
	cairn) "$CAIRN" init -q ;;
	restic) restic init -q >/dev/null ;;
	borg) borg init -e repokey "$work/borg-repo" >/dev/null 2>&1 ;;
	esac
}

export CAIRN_REPOSITORY=$work/cairn-repo CAIRN_CACHE_DIR=$work/cairn-cache CAIRN_PASSWORD=$PASSWORD
export RESTIC_REPOSITORY=$work/restic-repo RESTIC_CACHE_DIR=$work/restic-cache RESTIC_PASSWORD=$PASSWORD
export BORG_REPO=$work/borg-repo BORG_CACHE_DIR=$work/borg-cache BORG_CONFIG_DIR=$work/borg-config \
	BORG_PASSPHRASE=$PASSWORD BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
mkdir -p "$work"

for round in $(seq 1 "$ROUNDS"); do
	log "round $round of $ROUNDS"
	for tool in "${tools[@]}"; do
		# Before each tool's steps, not once per round: the copy frees
		# 2 GB of tmpfs pages, and under a hypervisor a step that finds
		# freed pages not yet handed back runs faster than one that must
		# fault new ones in, so every tool's first backup follows a copy.
		swap_in "$tree" night2
		copy_floor "$round"
		init "$tool"
		swap_in "$tree" night1
		backup "$tool" first "$round" "$tree"
		backup "$tool" unchanged "$round" "$tree"
		swap_in "$tree" night2
		backup "$tool" night2 "$round" "$tree"
		restore "$tool" "$round"
		init "$tool"
		swap_in "$shiftdir" shift0
		backup "$tool" shift0 "$round" "$shiftdir"
		swap_in "$shiftdir" shift1
		backup "$tool" shift1 "$round" "$shiftdir"
	done
done
restore_data

# --- report ------------------------------------------------------------------

report=$BENCH_DIR/results.md
note="Medians of $ROUNDS round(s); warm page cache (not dropped, dirty pages synced before each step); dataset: $params."
python3 - "$results" "$report" "$note" "${tools[@]}" <<'PY'
import statistics, sys
path, out, note, tools = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
rows = [l.rstrip("\n").split("\t") for l in open(path) if l.strip()]
med = {}
for tool in tools:
    for step in ("first", "unchanged", "night2", "restore", "shift0", "shift1"):
        rs = [r for r in rows if r[0] == tool and r[1] == step]
        if rs:
            col = lambda i: statistics.median(float(r[i]) for r in rs)
            med[tool, step] = dict(wall=col(3), cpu=col(4), rss=col(5) / 1024, repo=col(6) / 2**20, n=len(rs))
peers = [t for t in tools if t != "cairn"]
lines = [note, "", "| step | tool | wall s | CPU s | peak RSS MiB | repo MiB |", "|---|---|---|---|---|---|"]
for step in ("first", "unchanged", "night2", "restore", "shift0", "shift1"):
    for tool in tools:
        m = med.get((tool, step))
        if m:
            lines.append(f"| {step} | {tool} | {m['wall']:.2f} | {m['cpu']:.2f} | {m['rss']:.0f} | {m['repo']:.1f} |")
# Ratios below 1 favour cairn: one pair per peer and, with several peers,
# against the fastest and the leanest of them.
ratio = lambda a, b: f"{a / b:.2f}" if b > 0 else "-"
head = [f"cairn/{p}, {what}" for p in peers for what in ("wall", "RSS")]
if len(peers) > 1:
    head += ["cairn/best peer, wall", "cairn/leanest peer, RSS"]
if peers and ("cairn", "first") in med:
    lines += ["", "| step | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
for step in ("first", "unchanged", "night2", "restore", "shift0", "shift1"):
    c = med.get(("cairn", step))
    ps = {p: med[p, step] for p in peers if (p, step) in med}
    if not c or not ps:
        continue
    cells = []
    for p in peers:
        cells += [ratio(c["wall"], ps[p]["wall"]), ratio(c["rss"], ps[p]["rss"])] if p in ps else ["-", "-"]
    if len(peers) > 1:
        cells += [ratio(c["wall"], min(m["wall"] for m in ps.values())),
                  ratio(c["rss"], min(m["rss"] for m in ps.values()))]
    lines.append(f"| {step} | " + " | ".join(cells) + " |")
lines += ["", "| tool | repository after two nights, MiB | night-2 growth, MiB |", "|---|---|---|"]
for tool in tools:
    rs = {r[2]: r for r in rows if r[0] == tool and r[1] == "night2"}
    us = {r[2]: r for r in rows if r[0] == tool and r[1] == "unchanged"}
    growth = [(float(rs[k][6]) - float(us[k][6])) / 2**20 for k in rs if k in us]
    if growth:
        lines.append(f"| {tool} | {med[tool, 'night2']['repo']:.1f} | {statistics.median(growth):.1f} |")
c = lambda s: med.get(("cairn", s))
if c("first") and c("unchanged"):
    lines += ["", "cairn against its own targets:",
              f"- unchanged re-backup: {100 * c('unchanged')['wall'] / max(c('first')['wall'], 0.01):.1f}% of the first backup's wall time (target < 10%)",
              f"- peak RSS of the first backup: {c('first')['rss']:.0f} MiB (target < 200 MiB)"]
if c("shift0") and c("shift1"):
    growth = c("shift1")["repo"] - c("shift0")["repo"]
    lines.append(f"- shifted 200 MiB file: repository grew {growth:.1f} MiB = {100 * growth / 200:.1f}% (target < 5%)")
floor = [float(r[3]) for r in rows if r[0] == "copy" and r[1] == "restore"]
if floor:
    f = statistics.median(floor)
    scale = ", ".join(f"{t} {med[t, 'restore']['wall'] / f:.2f}" for t in tools if (t, "restore") in med)
    lines += ["", f"Restore floor: copying the night-2 tree into the same directory with cp took {f:.2f} s (median); restore wall / that: {scale}."]
text = "\n".join(lines) + "\n"
open(out, "w").write(text)
print(text)
PY
log "table written to $report"
