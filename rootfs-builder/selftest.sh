#!/usr/bin/env bash
# Self-test for rootfs-builder/build.sh: bad inputs must fail with one clear line, and
# a tiny --from-dir / --from-tar build must give an image that e2fsck accepts.
# Needs no root and no network; runs in a few seconds.
set -euo pipefail

build=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/build.sh
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export VMM_CACHE_DIR=$tmp/cache
failures=0

fail() {
	echo "FAIL: $*" >&2
	failures=$((failures + 1))
}

# expect_error NAME REGEX ARGS...: build.sh must exit non-zero with exactly one
# stderr line matching REGEX.
expect_error() {
	local name=$1 regex=$2 err
	shift 2
	if "$build" "$@" >/dev/null 2>"$tmp/err"; then
		fail "$name: succeeded"
		return
	fi
	err=$(cat "$tmp/err")
	if [[ $(grep -c . "$tmp/err") -ne 1 || ! $err =~ $regex ]]; then
		fail "$name: unexpected error output: $err"
		return
	fi
	echo "ok: $name: $err"
}

debugfs_cmd() { debugfs -R "$1" "$2" 2>/dev/null; }

# Content: a tiny tree plus a fake agent (not executable: the builder sets the mode).
mkdir -p "$tmp/root/etc" "$tmp/root/usr/sbin"
ln -s usr/sbin "$tmp/root/sbin"
echo hello >"$tmp/root/hello"
printf '#!/bin/sh\n' >"$tmp/agent"
chmod 600 "$tmp/agent"
tar -czf "$tmp/root.tar.gz" -C "$tmp/root" .
head -c 4096 /dev/urandom >"$tmp/bad.tar"
mkdir "$tmp/big"
head -c 20M /dev/zero >"$tmp/big/zeros"

expect_error "missing --from-dir" 'not a directory' --out "$tmp/x.ext4" --from-dir "$tmp/nope"
expect_error "missing --from-tar" 'cannot read' --out "$tmp/x.ext4" --from-tar "$tmp/nope.tar"
expect_error "bad tar" 'not a readable tar archive' --out "$tmp/x.ext4" --from-tar "$tmp/bad.tar"
expect_error "too small" 'too small for [0-9]+ MiB of content; need at least [0-9]+M' \
	--out "$tmp/x.ext4" --from-dir "$tmp/big" --size 16M
expect_error "bad size" "bad --size '2T'" --out "$tmp/x.ext4" --from-dir "$tmp/root" --size 2T
expect_error "unknown flag" 'unknown argument: --frobnicate' --out "$tmp/x.ext4" --frobnicate
expect_error "missing --out" '--out FILE is required' --from-dir "$tmp/root"
expect_error "--docker with content" '--docker builds the Debian image' \
	--out "$tmp/x.ext4" --docker --from-dir "$tmp/root"
[[ ! -e $tmp/x.ext4 ]] || fail "a failed build left $tmp/x.ext4 behind"

# check_image NAME FILE: e2fsck clean, content and agent present with the right mode.
check_image() {
	local name=$1 img=$2
	if ! e2fsck -fn "$img" >"$tmp/fsck" 2>&1; then
		fail "$name: e2fsck -fn failed: $(tail -n 3 "$tmp/fsck")"
		return
	fi
	[[ $(debugfs_cmd 'cat /hello' "$img") == hello ]] || fail "$name: /hello missing"
	[[ -n $(debugfs_cmd 'cat /etc/hostname' "$img") ]] || fail "$name: /etc/hostname empty"
	debugfs_cmd 'stat /usr/sbin/vmm-agent' "$img" | grep -q 'Mode:  0755' ||
		fail "$name: /sbin/vmm-agent missing or not mode 0755"
	echo "ok: $name: e2fsck clean, content and agent present"
}

if "$build" --out "$tmp/dir.ext4" --from-dir "$tmp/root" --size 32M --agent "$tmp/agent" >/dev/null; then
	check_image "--from-dir build" "$tmp/dir.ext4"
else
	fail "--from-dir build failed"
fi
if ((EUID == 0)); then
	if "$build" --out "$tmp/tar.ext4" --from-tar "$tmp/root.tar.gz" --size 32 --agent "$tmp/agent" >/dev/null; then
		check_image "--from-tar build" "$tmp/tar.ext4"
	else
		fail "--from-tar build failed"
	fi
else
	echo "skip: --from-tar build (needs root to keep file owners)"
fi

if ((failures)); then
	echo "rootfs selftest: $failures failure(s)" >&2
	exit 1
fi
echo "rootfs selftest: all passed"
