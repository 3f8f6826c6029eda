#!/usr/bin/env bash
# Times `cairn prune` against `restic prune` on repositories of 100
# snapshots of which the older half was forgotten.
#
#   scripts/bench-prune.sh                            # 100 versions of a 200 MiB tree, 2 rounds
#   VERSIONS=10 BENCH_SIZE_MB=20 BENCH_FILES=1000 ROUNDS=1 scripts/bench-prune.sh   # smoke run
#
# The dataset: a tree of real files copied from BENCH_SRC (scripts/gendata
# tree), backed up VERSIONS times by both tools, version after version
# (cairn, then restic, each snapshot tagged vNNN), with CHANGE_PERCENT% of
# the files changed between versions (4 KiB overwritten at a random offset,
# or a line appended). Then `forget --keep-last KEEP` in both repositories
# (default: half of them), and the same snapshots must remain in both.
#
# This prepared state (repositories and caches) is made once and reused
# while the parameters match; each round copies it (cp -a) and prunes the
# copy, the tools alternating (cairn first in odd rounds, restic first in
# even ones), so every prune starts from identical input. Both prune with
# their defaults (max unused 5%). Each prune runs under /usr/bin/time -f
# '%e %U %S %M'; the repository size (du -sb) is taken before and after. The
# pruned copies of the last round are checked (`cairn check`, `restic
# check`, not timed).
#
# Knobs: BENCH_DIR (default /tmp/cairn-bench-prune), VERSIONS (100), KEEP
# (VERSIONS/2), BENCH_SIZE_MB (200), BENCH_FILES (10000), CHANGE_PERCENT (5),
# BENCH_SRC (/usr/share), ROUNDS (2).
set -euo pipefail
cd "$(dirname "$0")/.."

BENCH_DIR=${BENCH_DIR:-/tmp/cairn-bench-prune}
VERSIONS=${VERSIONS:-100}
KEEP=${KEEP:-$((VERSIONS / 2))}
BENCH_SIZE_MB=${BENCH_SIZE_MB:-200}
BENCH_FILES=${BENCH_FILES:-10000}
CHANGE_PERCENT=${CHANGE_PERCENT:-5}
BENCH_SRC=${BENCH_SRC:-/usr/share}
ROUNDS=${ROUNDS:-2}
PASSWORD=bench-password

log() { echo "bench-prune: $*" >&2; }

make --no-print-directory build >/dev/null
CAIRN=$PWD/bin/cairn
for t in /usr/bin/time restic python3; do
	command -v "$t" >/dev/null || { log "$t is needed"; exit 1; }
done
log "$("$CAIRN" version | head -1); $(restic version)"
log "load average at the start: $(cut -d' ' -f1-3 /proc/loadavg)"

prep=$BENCH_DIR/prep
work=$BENCH_DIR/work
tree=$BENCH_DIR/tree

# tool_env DIR: points both tools at the repositories and caches under DIR.
tool_env() {
	export CAIRN_REPOSITORY=$1/cairn-repo CAIRN_CACHE_DIR=$1/cairn-cache CAIRN_PASSWORD=$PASSWORD
	export RESTIC_REPOSITORY=$1/restic-repo RESTIC_CACHE_DIR=$1/restic-cache RESTIC_PASSWORD=$PASSWORD
}

# mutate VERSION: changes CHANGE_PERCENT% of the tree's files, chosen and
# changed the same way for a given VERSION.
mutate() {
	python3 - "$tree" "$1" "$CHANGE_PERCENT" <<'PY'
import os, random, sys
root, version, percent = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
rng = random.Random(version)
files = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs)
files = [p for p in files if os.path.isfile(p) and not os.path.islink(p)]
for p in rng.sample(files, max(1, round(len(files) * percent / 100))):
    size = os.path.getsize(p)
    with open(p, "r+b") as f:
        if size > 0 and rng.random() < 0.5:
            off = rng.randrange(size)
            f.seek(off)
            f.write(rng.randbytes(min(4096, size - off)))
        else:
            f.seek(0, os.SEEK_END)
            f.write(b"\nchanged in version %d: %d\n" % (version, rng.getrandbits(64)))
PY
}

# tags TOOL: the sorted tags of the tool's snapshots, one a line.
tags() {
	case $1 in
	cairn) "$CAIRN" snapshots --json ;;
	restic) restic snapshots --json ;;
	esac | python3 -c 'import json, sys; print("\n".join(sorted(t for s in json.load(sys.stdin) for t in (s.get("tags") or []))))'
}

params="versions=$VERSIONS keep=$KEEP size=$BENCH_SIZE_MB files=$BENCH_FILES change=$CHANGE_PERCENT src=$BENCH_SRC"
if [[ $(cat "$prep/params" 2>/dev/null) != "$params" ]]; then
	log "preparing $VERSIONS snapshots in both repositories ($params)"
	rm -rf "$prep" "$tree"
	mkdir -p "$prep"
	go run ./scripts/gendata tree -dst "$tree" -files "$BENCH_FILES" -mb "$BENCH_SIZE_MB" -src "$BENCH_SRC"
	log "tree: $(find "$tree" -type f | wc -l) files, $(du -sm "$tree" | cut -f1) MiB"
	tool_env "$prep"
	"$CAIRN" init -q
	restic init -q --repository-version 2 >/dev/null
	start=$SECONDS
	for v in $(seq 1 "$VERSIONS"); do
		tag=$(printf 'v%03d' "$v")
		((v == 1)) || mutate "$v"
		"$CAIRN" backup -q --tag "$tag" "$tree"
		restic backup -q --tag "$tag" "$tree" >/dev/null
		((v % 10)) || log "  $v versions backed up ($((SECONDS - start)) s)"
	done
	log "repositories with $VERSIONS snapshots: cairn $(du -sm "$CAIRN_REPOSITORY" | cut -f1) MiB, restic $(du -sm "$RESTIC_REPOSITORY" | cut -f1) MiB"
	"$CAIRN" forget -q --keep-last "$KEEP" >/dev/null
	restic forget -q --keep-last "$KEEP" >/dev/null
	kept=$(tags cairn)
	if [[ $kept != "$(tags restic)" || $(wc -l <<<"$kept") != "$KEEP" ]]; then
		log "after forget the tools keep different snapshots:"
		diff <(echo "$kept") <(tags restic) >&2 || true
		exit 1
	fi
	log "forgot all but the last $KEEP snapshots in both ($(sed -n '1p;$p' <<<"$kept" | paste -sd' ') remain)"
	echo "$params" >"$prep/params"
fi

results=$BENCH_DIR/results.tsv # tool round wall cpu rss_kib before_bytes after_bytes
: >"$results"
rm -f "$BENCH_DIR/results.md"
tool_env "$work"

# prune_round TOOL ROUND: prunes a fresh copy of the prepared repository.
prune_round() {
	local tool=$1 round=$2
	rm -rf "${work:?}/$tool-repo" "$work/$tool-cache"
	mkdir -p "$work"
	cp -a "$prep/$tool-repo" "$prep/$tool-cache" "$work/"
	sync
	local before wall user sys rss after
	before=$(du -sb "$work/$tool-repo" | cut -f1)
	local cmd=("$CAIRN" prune)
	[[ $tool == restic ]] && cmd=(restic prune)
	if ! /usr/bin/time -f '%e %U %S %M' -o "$work/time.txt" "${cmd[@]}" >"$work/$tool-prune.out" 2>"$work/$tool-prune.err"; then
		log "$tool prune failed:"
		tail -5 "$work/$tool-prune.err" >&2
		exit 1
	fi
	read -r wall user sys rss < <(tail -1 "$work/time.txt")
	after=$(du -sb "$work/$tool-repo" | cut -f1)
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$tool" "$round" "$wall" "$(awk "BEGIN{print $user + $sys}")" \
		"$rss" "$before" "$after" >>"$results"
	printf '  round %d %-6s prune: wall %6.2f s  rss %4d MiB  repo %5d -> %5d MiB\n' "$round" "$tool" "$wall" \
		$((rss / 1024)) $((before >> 20)) $((after >> 20)) >&2
}

for round in $(seq 1 "$ROUNDS"); do
	order=(cairn restic)
	((round % 2)) || order=(restic cairn)
	for tool in "${order[@]}"; do
		prune_round "$tool" "$round"
	done
done
log "checking the pruned repositories of the last round"
"$CAIRN" check -q >/dev/null || { log "cairn check failed after prune"; exit 1; }
restic check -q >/dev/null 2>&1 || { log "restic check failed after prune"; exit 1; }
[[ $(tags cairn) == "$(tags restic)" ]] || { log "the pruned repositories hold different snapshots"; exit 1; }
log "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"

report=$BENCH_DIR/results.md
note="Medians of $ROUNDS round(s); $params; prune with each tool's defaults (max unused 5%)."
python3 - "$results" "$report" "$note" <<'PY'
import statistics, sys
path, out, note = sys.argv[1:4]
rows = [l.rstrip("\n").split("\t") for l in open(path) if l.strip()]
med = {}
for tool in ("cairn", "restic"):
    rs = [r for r in rows if r[0] == tool]
    col = lambda i: statistics.median(float(r[i]) for r in rs)
    med[tool] = dict(wall=col(2), cpu=col(3), rss=col(4) / 1024, before=col(5) / 2**20, after=col(6) / 2**20)
lines = [note, "", "| tool | wall s | CPU s | peak RSS MiB | repo MiB before | repo MiB after |", "|---|---|---|---|---|---|"]
for tool, m in med.items():
    lines.append(f"| {tool} | {m['wall']:.2f} | {m['cpu']:.2f} | {m['rss']:.0f} | {m['before']:.1f} | {m['after']:.1f} |")
c, r = med["cairn"], med["restic"]
lines += ["", f"cairn/restic: wall {c['wall'] / r['wall']:.2f}, CPU {c['cpu'] / r['cpu']:.2f}, peak RSS {c['rss'] / r['rss']:.2f}", "",
          "Every round (wall s, peak RSS MiB):", ""]
for tool in ("cairn", "restic"):
    lines.append(f"- {tool}: " + ", ".join(f"round {r[1]} {float(r[2]):.2f} s / {int(r[4]) // 1024} MiB" for r in rows if r[0] == tool))
text = "\n".join(lines) + "\n"
open(out, "w").write(text)
print(text)
PY
log "table written to $report; the prunes' output is in $work/*-prune.{out,err}"
