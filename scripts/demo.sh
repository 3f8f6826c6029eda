#!/usr/bin/env bash
# Runs cairn's main job on the embedded default: a local repository in
# _demo/repo (a leading underscore keeps the go tool out of the copied
# sources), two nightly backups of this source tree (the second incremental),
# a listing, a restore and a comparison with the original.
set -euo pipefail
cd "$(dirname "$0")/.."

make --no-print-directory build
bin=$PWD/bin/cairn
demo=$PWD/_demo
rm -rf "$demo"
mkdir -p "$demo/src"
# A copy, so the second night can change something without touching the tree.
cp -r chunk crypto docs index pack repo snapshot cmd "$demo/src/"

export CAIRN_REPOSITORY=$demo/repo
export CAIRN_PASSWORD=demo-password
export CAIRN_CACHE_DIR=$demo/cache

step() { printf '\n== %s\n' "$*"; }

step "cairn init"
"$bin" init
step "cairn backup (first night)"
"$bin" backup --tag demo "$demo/src"
echo "// changed on the second night" >>"$demo/src/docs/format.md"
step "cairn backup (second night: only the changed file is read)"
"$bin" backup --tag demo "$demo/src"
step "cairn snapshots"
"$bin" snapshots
step "cairn diff"
"$bin" diff "$("$bin" snapshots --json | sed -n 's/.*"id":"\([0-9a-f]\{64\}\)".*"id":"[0-9a-f]\{64\}".*/\1/p')" latest
step "cairn restore latest --target _demo/restore"
"$bin" restore latest --target "$demo/restore"
diff -r "$demo/src" "$demo/restore$demo/src"
echo "restored tree is identical to the source"
