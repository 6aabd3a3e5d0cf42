#!/usr/bin/env bash
# Build the guest kernel (vmlinux + bzImage) from Debian's linux-source-6.12 with
# kernel-config/guest.config merged onto x86_64_defconfig, and copy both to OUT_DIR.
#
# Results are cached outside the checkout, keyed by the fragment, this script and the
# installed source package version, so a fresh clone gets its kernel in seconds. The
# extracted source tree is kept in the cache too, so a fragment change rebuilds
# incrementally.
set -euo pipefail

usage() {
	cat <<EOF
usage: $0 OUT_DIR

Writes OUT_DIR/vmlinux and OUT_DIR/bzImage.
Cache: \${VMM_CACHE_DIR:-\$HOME/.cache/vmm}/kernel (currently $cache)
EOF
}

log() { echo "kernel: $*"; }
die() {
	echo "kernel: error: $*" >&2
	exit 1
}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
fragment=$here/guest.config
src_pkg=linux-source-6.12
tarball=/usr/src/$src_pkg.tar.xz
check_config=/usr/share/docker.io/contrib/check-config.sh
cache=${VMM_CACHE_DIR:-$HOME/.cache/vmm}/kernel

case "${1:-}" in
-h | --help) usage; exit 0 ;;
"" | -*) usage >&2; exit 2 ;;
esac
[[ $# -eq 1 ]] || { usage >&2; exit 2; }
out=$1

# Build dependencies; docker.io only for its contrib/check-config.sh.
pkgs=(build-essential bc bison flex libelf-dev libssl-dev xz-utils "$src_pkg" docker.io)
ensure_packages() {
	local missing=() p
	command -v dpkg-query >/dev/null || die "dpkg-query not found: this script expects a Debian host"
	for p in "${pkgs[@]}"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
	done
	((${#missing[@]} == 0)) && return
	if ((EUID != 0)); then
		die "missing packages; run: sudo apt-get install -y ${missing[*]}"
	fi
	log "installing ${missing[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" >/dev/null
}

# Copy a file into OUT_DIR via a temp name so a reader never sees half a kernel.
install_out() {
	cp --reflink=auto "$1" "$out/.$2.tmp.$$"
	mv -f "$out/.$2.tmp.$$" "$out/$2"
}

# Every CONFIG_X=y in the fragment must survive olddefconfig: a renamed option or an
# unmet dependency is silently dropped by Kconfig otherwise.
verify_fragment() {
	local cfg=$1 line name missing=()
	while IFS= read -r line; do
		grep -qxF "$line" "$cfg" || missing+=("$line (got: $(grep -E "^(# )?${line%%=*}[= ]" "$cfg" || echo absent))")
	done < <(grep -E '^CONFIG_[A-Za-z0-9_]+=y$' "$fragment")
	while read -r _ name _; do
		grep -q "^$name=" "$cfg" && log "warning: $name is still set (selected by another option)"
	done < <(grep -E '^# CONFIG_[A-Za-z0-9_]+ is not set' "$fragment")
	if ((${#missing[@]})); then
		printf 'kernel: error: fragment option not =y in the final .config: %s\n' "${missing[@]}" >&2
		exit 1
	fi
	log "config: all $(grep -cE '^CONFIG_[A-Za-z0-9_]+=y$' "$fragment") =y options of the fragment are set"
}

# Run Docker's check-config.sh against the .config. Only CONFIG_ lines count: the
# other rows (cgroup mount, apparmor, keys limit) describe the build host. uname is
# shimmed so its version-dependent checks apply to the guest kernel, not the host.
docker_check() {
	local cfg=$1 shim report necessary missing_necessary missing_optional
	shim=$(mktemp -d)
	printf '#!/bin/sh\necho %s\n' "$kver" >"$shim/uname"
	chmod +x "$shim/uname"
	report=$(PATH="$shim:$PATH" bash "$check_config" "$cfg" 2>&1 | sed 's/\x1b\[[0-9;]*m//g' || true)
	rm -rf "$shim"
	necessary=$(sed -n '/^Generally Necessary:/,/^Optional Features:/p' <<<"$report" | grep -E 'CONFIG_[A-Z0-9_]+:' || true)
	missing_necessary=$(grep -E ': missing' <<<"$necessary" | grep -oE 'CONFIG_[A-Z0-9_]+' || true)
	missing_optional=$(sed -n '/^Optional Features:/,$p' <<<"$report" | grep -E 'CONFIG_[A-Z0-9_]+: missing' |
		grep -oE 'CONFIG_[A-Z0-9_]+' || true)
	[[ -n $necessary ]] || die "could not parse the output of $check_config"
	[[ -z $missing_necessary ]] || die "check-config.sh: generally necessary options missing: $(echo "$missing_necessary" | xargs)"
	log "check-config: generally necessary $(grep -c . <<<"$necessary")/$(grep -c . <<<"$necessary") enabled;" \
		"optional missing: $(grep -c . <<<"$missing_optional" || true) ($(echo "$missing_optional" | xargs))"
}

# Print one line per 250 compiled objects instead of kbuild's thousands; errors pass.
progress() {
	local line n=0 t0=$SECONDS
	while IFS= read -r line; do
		case $line in
		"  CC"* | "  AS"* | "  AR"* | "  LD"*)
			((++n % 250)) || log "$(printf '%5d objects, %3d s' "$n" $((SECONDS - t0)))" ;;
		*": error:"* | *"***"*) echo "$line" ;;
		esac
	done
	log "$n objects built"
}

ensure_packages
[[ -r $tarball ]] || die "$tarball not found (package $src_pkg)"
[[ -r $check_config ]] || die "$check_config not found (package docker.io)"
src_ver=$(dpkg-query -W -f='${Version}' "$src_pkg")
key=$({ cat "$fragment" "${BASH_SOURCE[0]}"; echo "$src_pkg $src_ver"; } | sha256sum | cut -c1-16)
mkdir -p "$cache" "$out"

# One build at a time per cache: a second caller waits and then hits the cache.
exec 9>"$cache/.lock"
flock 9

if [[ -f $cache/$key/bzImage && -f $cache/$key/vmlinux ]]; then
	install_out "$cache/$key/vmlinux" vmlinux
	install_out "$cache/$key/bzImage" bzImage
	log "cache hit $key"
	exit 0
fi
log "cache miss $key (fragment + build.sh + $src_pkg $src_ver)"

# The source tree is keyed by package version only, so it survives fragment edits.
tree=$cache/src/$src_pkg-$src_ver
if [[ ! -f $tree/Makefile ]]; then
	log "extracting $tarball into $tree"
	rm -rf "$tree.tmp"
	mkdir -p "$tree.tmp"
	tar -xf "$tarball" -C "$tree.tmp" --strip-components=1
	mv "$tree.tmp" "$tree"
fi
kver=$(make -s -C "$tree" kernelversion)

log "configuring $kver: x86_64_defconfig + $(basename "$fragment")"
make -s -C "$tree" x86_64_defconfig
(cd "$tree" && scripts/kconfig/merge_config.sh -m .config "$fragment" >/dev/null)
make -s -C "$tree" olddefconfig
verify_fragment "$tree/.config"
docker_check "$tree/.config"

jobs=$(nproc)
log "building vmlinux bzImage with -j$jobs (full log: $tree/build.log)"
start=$(date +%s)
if ! nice -n 10 make -C "$tree" -j"$jobs" vmlinux bzImage 2>&1 | tee "$tree/build.log" | progress; then
	tail -n 30 "$tree/build.log" >&2
	die "make failed; see $tree/build.log"
fi
log "built in $(($(date +%s) - start)) s"

# Publish atomically: a directory appears under its key only when complete.
tmp=$(mktemp -d "$cache/.$key.XXXXXX")
cp "$tree/vmlinux" "$tree/arch/x86/boot/bzImage" "$tmp/"
cp "$tree/.config" "$tmp/config"
chmod 755 "$tmp"
mv -T "$tmp" "$cache/$key" 2>/dev/null || rm -rf "$tmp"
install_out "$cache/$key/vmlinux" vmlinux
install_out "$cache/$key/bzImage" bzImage
log "stored in $cache/$key; wrote $out/vmlinux ($(du -h "$out/vmlinux" | cut -f1)) and $out/bzImage ($(du -h "$out/bzImage" | cut -f1))"
