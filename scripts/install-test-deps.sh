#!/usr/bin/env bash
# Installs what the tests need on a Debian 12 machine, when it is missing and
# installing is possible (root, apt, the Go module proxy). Quick when
# everything is present. When something cannot be installed it says so and
# goes on: each test decides for itself whether to skip or fail.
#
# Adding a dependency:
#   - a Debian package: one line in APT_DEPS ("command package");
#   - a Go-built server: one go_dep line in install_go_deps (see
#     shared docs/test-servers.md §1 for the pinned versions), or a tool_dep
#     line when it must be built from a pinned module under tests/tools
#     (servers whose go.mod has replace directives, like etcd).
set -euo pipefail

cd "$(dirname "$0")/.."

# command-to-look-for  debian-package
APT_DEPS=(
	"restic restic" # benchmark baseline; oracle for compatibility tests
	"/usr/bin/time time" # peak RSS in scripts/bench.sh
	# Servers for tests/testenv (see test-servers.md §4-6). PostgreSQL 15 is
	# usually on the image already; --no-upgrade below keeps its version.
	"/usr/lib/postgresql/15/bin/postgres postgresql-15"
	"/usr/lib/postgresql/15/bin/pg_dump postgresql-client-15"
	"/usr/sbin/mariadbd mariadb-server"
	"mariadb-dump mariadb-client"
	"redis-server redis-server"
	"redis-cli redis-tools"
)

# Go-built binaries go here; the tests find them through TESTENV_BIN_DIR.
export GOBIN="$PWD/.cache/testbin"

log() { echo "install-test-deps: $*" >&2; }

have() {
	if [[ $1 == /* ]]; then [[ -x $1 ]]; else command -v "$1" >/dev/null 2>&1; fi
}

install_apt_deps() {
	local missing=() entry cmd pkg
	for entry in "${APT_DEPS[@]}"; do
		read -r cmd pkg <<<"$entry"
		have "$cmd" || missing+=("$pkg")
	done
	((${#missing[@]} == 0)) && return 0

	if [[ $(id -u) -ne 0 ]] || ! have apt-get; then
		log "missing ${missing[*]} (not root or no apt-get: install them yourself; tests that need them will skip or fail)"
		return 0
	fi
	log "installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	local apt=(apt-get -q -y -o DPkg::Lock::Timeout=600)
	if ! "${apt[@]}" update >/dev/null ||
		! "${apt[@]}" install --no-install-recommends --no-upgrade "${missing[@]}" >/dev/null; then
		log "apt-get could not install ${missing[*]}; going on without them"
	fi
}

# go_dep NAME MODULE@VERSION: go install MODULE@VERSION unless $GOBIN/NAME exists.
go_dep() {
	local name=$1 mod=$2
	[[ -x $GOBIN/$name ]] && return 0
	log "building $name from $mod"
	mkdir -p "$GOBIN"
	go install "$mod" || log "could not build $name; going on without it"
}

# tool_dep NAME DIR PACKAGE: build PACKAGE as $GOBIN/NAME inside the module in
# DIR, whose go.mod pins it, unless $GOBIN/NAME exists.
tool_dep() {
	local name=$1 dir=$2 pkg=$3
	[[ -x $GOBIN/$name ]] && return 0
	log "building $name from $pkg ($dir)"
	mkdir -p "$GOBIN"
	(cd "$dir" && go build -o "$GOBIN/$name" "$pkg") || log "could not build $name; going on without it"
}

install_go_deps() {
	# S3 server for repo/s3 (about 5 minutes cold; see test-servers.md §2).
	go_dep minio github.com/minio/minio@v0.0.0-20260212201848-7aac2a2c5b7c
	# etcd v3.6.16 (about 1.5 minutes cold; test-servers.md §3). Its modules
	# have replace directives, so go install MODULE@VERSION refuses them.
	tool_dep etcd tests/tools/etcd go.etcd.io/etcd/server/v3
	tool_dep etcdctl tests/tools/etcd go.etcd.io/etcd/etcdctl/v3
	tool_dep etcdutl tests/tools/etcd go.etcd.io/etcd/etcdutl/v3
}

install_apt_deps
install_go_deps
