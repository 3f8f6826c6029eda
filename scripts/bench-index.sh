#!/usr/bin/env bash
# Shows whether a backup's cost grows with the repository's index: the same
# first backup of one tree into a freshly initialised repository ("small")
# and into one whose index holds BENCH_BLOBS blobs ("large"), each with a
# warm cache and with a cold (new, empty) cache directory.
#
#   scripts/bench-index.sh                                          # 10M blobs, 512 MiB tree
#   BENCH_BLOBS=1000000 BENCH_TREE_MB=128 BENCH_TREE_FILES=3000 scripts/bench-index.sh   # quicker
#
# Knobs: BENCH_DIR (work dir, default /tmp/cairn-bench-index), BENCH_BLOBS
# (blobs in the large repository's index, default 10000000), BENCH_TREE_MB
# (512) and BENCH_TREE_FILES (10000): the tree backed up, real files copied
# from BENCH_SRC (default /usr/local/go/src) topped up with generated ones
# (scripts/gendata tree). The tree and both repositories are made once and
# reused while these parameters match.
#
# Both repositories are made by `cairn init` with the same password. The
# large one's index is synthetic (scripts/mkindex): real, encrypted index
# files of 50,000 blobs each, 32 blobs of about 512 KiB to a pack, whose
# packs do not exist. A backup of new data only asks the index whether its
# blobs are stored, so the packs are not needed; `cairn check` would report
# them missing.
#
# Steps, each under /usr/bin/time -f '%e %U %S %M':
#   index  `cairn stats` with an empty cache: loading the index alone; the
#          cache it leaves is the warm cache below
#   warm   backup of the tree into a copy of the repository (cp -a), with a
#          copy of that warm cache
#   cold   backup of the tree into a copy of the repository, with a new,
#          empty cache directory: the index is merged into it first
# Every backup thus stores the whole tree as new data into the same
# repository state. The page cache is not dropped: dirty pages are synced
# and the tree is read once (untimed) before every step.
set -euo pipefail
cd "$(dirname "$0")/.."

BENCH_DIR=${BENCH_DIR:-/tmp/cairn-bench-index}
BENCH_BLOBS=${BENCH_BLOBS:-10000000}
BENCH_TREE_MB=${BENCH_TREE_MB:-512}
BENCH_TREE_FILES=${BENCH_TREE_FILES:-10000}
BENCH_SRC=${BENCH_SRC:-/usr/local/go/src}
PASSWORD=bench-password

log() { echo "bench-index: $*" >&2; }

command -v /usr/bin/time >/dev/null || { log "GNU time (/usr/bin/time) is needed"; exit 1; }
make --no-print-directory build >/dev/null
CAIRN=$PWD/bin/cairn
log "$("$CAIRN" version | head -1)"
log "load average at the start: $(cut -d' ' -f1-3 /proc/loadavg)"

export CAIRN_PASSWORD=$PASSWORD
tree=$BENCH_DIR/tree
prep=$BENCH_DIR/prep # pristine repositories and their warm caches
work=$BENCH_DIR/work
mkdir -p "$BENCH_DIR"

tparams="mb=$BENCH_TREE_MB files=$BENCH_TREE_FILES src=$BENCH_SRC"
if [[ $(cat "$tree.params" 2>/dev/null) != "$tparams" ]]; then
	log "generating the tree ($tparams)"
	rm -rf "$tree" "$tree.params"
	go run ./scripts/gendata tree -dst "$tree" -files "$BENCH_TREE_FILES" -mb "$BENCH_TREE_MB" -src "$BENCH_SRC"
	echo "$tparams" >"$tree.params"
fi

rparams="blobs=$BENCH_BLOBS"
if [[ $(cat "$prep/params" 2>/dev/null) != "$rparams" ]]; then
	rm -rf "$prep"
	mkdir -p "$prep"
	for r in small large; do
		CAIRN_REPOSITORY=$prep/$r "$CAIRN" init -q
	done
	log "writing $BENCH_BLOBS blobs into the large repository's index"
	go run ./scripts/mkindex -repo "$prep/large" -blobs "$BENCH_BLOBS"
	echo "$rparams" >"$prep/params"
fi
log "index files: small $(find "$prep/small/index" -type f | wc -l), large $(find "$prep/large/index" -type f | wc -l) ($(du -sh "$prep/large/index" | cut -f1))"

results=$BENCH_DIR/results.tsv # repo step wall cpu rss_kib
: >"$results"
rm -f "$BENCH_DIR/results.md"

# run_step REPO STEP CMD...: runs CMD under /usr/bin/time and records it.
run_step() {
	local r=$1 step=$2
	shift 2
	local tf=$work/time.txt
	sync
	if ! /usr/bin/time -f '%e %U %S %M' -o "$tf" "$@" >"$work/out.txt" 2>"$work/err.txt"; then
		log "$r $step failed: $*"
		tail -5 "$work/err.txt" >&2
		exit 1
	fi
	local wall user sys rss
	read -r wall user sys rss < <(tail -1 "$tf")
	printf '%s\t%s\t%s\t%s\t%s\n' "$r" "$step" "$wall" "$(awk "BEGIN{print $user + $sys}")" "$rss" >>"$results"
	printf '  %-5s %-5s wall %7.2f s  rss %5d MiB\n' "$r" "$step" "$wall" $((rss / 1024)) >&2
}

# backup REPO STEP CACHE: backs the tree up into a copy of the pristine
# repository, with CACHE as the cache directory.
backup() {
	local r=$1 step=$2 cache=$3
	rm -rf "$work/repo"
	cp -a "$prep/$r" "$work/repo"
	find "$tree" -type f -print0 | xargs -0 cat >/dev/null
	CAIRN_REPOSITORY=$work/repo CAIRN_CACHE_DIR=$cache run_step "$r" "$step" "$CAIRN" backup -q "$tree"
}

for r in small large; do
	rm -rf "$work"
	mkdir -p "$work"
	# The warm cache is made on every run: a cache copied along with an
	# earlier run's repository may have merged files the pristine one lacks.
	rm -rf "$prep/$r-cache"
	CAIRN_REPOSITORY=$prep/$r CAIRN_CACHE_DIR=$prep/$r-cache run_step "$r" index "$CAIRN" stats -q
	cp -a "$prep/$r-cache" "$work/cache"
	backup "$r" warm "$work/cache"
	rm -rf "$work/cache"
	backup "$r" cold "$work/cache"
	rm -rf "$work"
done

report=$BENCH_DIR/results.md
note="One run each; warm page cache (not dropped, dirty pages synced and the tree read before each step); large index: $BENCH_BLOBS blobs; tree: $tparams ($(du -sh "$tree" | cut -f1), $(find "$tree" -type f | wc -l) files)."
python3 - "$results" "$report" "$note" <<'PY'
import sys
path, out, note = sys.argv[1:]
rows = [l.rstrip("\n").split("\t") for l in open(path) if l.strip()]
what = {"index": "index load only (`cairn stats`), empty cache",
        "warm": "backup, warm cache", "cold": "backup, cold cache"}
lines = [note, "", "| step | repository | wall s | CPU s | peak RSS MiB |", "|---|---|---|---|---|"]
for step in ("index", "warm", "cold"):
    for r in rows:
        if r[1] == step:
            lines.append(f"| {what[step]} | {r[0]} | {float(r[2]):.2f} | {float(r[3]):.2f} | {int(r[4]) / 1024:.0f} |")
text = "\n".join(lines) + "\n"
open(out, "w").write(text)
print(text)
PY
log "table written to $report"
