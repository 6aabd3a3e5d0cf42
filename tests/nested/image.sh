#!/usr/bin/env bash
# Builds the emulated KVM host's boot files (L1): Debian's linux-image-amd64 kernel and an
# initramfs with busybox-static, the kernel modules L1 needs (virtio, 9p, kvm_amd) and our
# /init. Both come from Debian packages only and are cached outside the checkout, keyed
# by the package versions and the files that shape the initramfs.
#
# Usage: tests/nested/image.sh   prints the cache directory holding vmlinuz and initramfs.gz
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache_root=${VMM_CACHE_DIR:-$HOME/.cache/vmm}/nested
# Modules L1 loads, in this order (their dependencies are resolved from modules.dep);
# vhost_vsock serves QEMU microvm, the boot benchmark's peer; tun gives the virtio-net
# tests their TAP devices; bridge, veth and the nf_tables expressions are the host side
# of --net auto (`vmm net setup`: NAT, conntrack, redirect, bridge-family rules);
# crc32c_generic first: libcrc32c (for conntrack) asks the crypto API for it at load;
# ext4 mounts the rootfs image of the test jail (tier 2's sandbox, paired with a VM).
modules=(virtio_pci virtio_blk 9pnet_virtio 9p kvm kvm-amd loop vhost_vsock tun
	crc32c_generic bridge veth nf_tables nft_ct nft_nat nft_masq nft_redir nft_chain_nat nft_meta_bridge
	ext4)

log() { echo "nested: $*" >&2; }
die() {
	echo "nested: error: $*" >&2
	exit 1
}

# The candidate version of a Debian package, or nothing when apt does not know it.
candidate() {
	apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ { if ($2 != "(none)") print $2 }'
}

ensure_apt_lists() {
	[[ -n $(candidate busybox-static) ]] && return
	((EUID == 0)) || die "apt knows no busybox-static package: run 'sudo apt-get update'"
	log "apt-get update (package lists are empty)"
	apt-get update -qq >&2 || die "apt-get update failed"
	[[ -n $(candidate busybox-static) ]] || die "no busybox-static package in the configured Debian suites"
}

ensure_apt_lists
meta_version=$(candidate linux-image-amd64)
[[ -n $meta_version ]] || die "no linux-image-amd64 package in the configured Debian suites"
# linux-image-amd64 is a meta package: the real one is its dependency.
kpkg=$(apt-cache show "linux-image-amd64=$meta_version" | awk -F'[ ,]+' '/^Depends:/ { print $2; exit }')
[[ $kpkg == linux-image-* ]] || die "cannot tell which kernel linux-image-amd64 $meta_version depends on"
kver=${kpkg#linux-image-}
bb_version=$(candidate busybox-static)

key=$(
	{
		echo "$kpkg $meta_version busybox-static $bb_version ${modules[*]}"
		cat "$here/image.sh" "$here/init" "$here/runjob"
	} | sha256sum | cut -c1-16
)
out=$cache_root/$key
if [[ -f $out/initramfs.gz && -f $out/vmlinuz ]]; then
	echo "$out"
	exit 0
fi

log "building the L1 image: $kpkg ($meta_version), busybox-static $bb_version"
command -v cpio >/dev/null || die "cpio is missing: apt-get install cpio"
command -v depmod >/dev/null || [[ -x /sbin/depmod ]] || die "depmod is missing: apt-get install kmod"
mkdir -p "$cache_root"
work=$(mktemp -d "$cache_root/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download -q "$kpkg" busybox-static >/dev/null 2>&1) ||
	die "apt-get download $kpkg busybox-static failed"
mkdir "$work/kernel" "$work/busybox"
dpkg-deb -x "$work"/linux-image-*.deb "$work/kernel"
dpkg-deb -x "$work"/busybox-static_*.deb "$work/busybox"
/sbin/depmod -b "$work/kernel" "$kver"
moddir=$work/kernel/lib/modules/$kver

# Module paths in load order: each one after the modules it depends on.
declare -A seen=()
order=()
add_module() {
	local path=$1 deps dep
	[[ -n ${seen[$path]:-} ]] && return
	seen[$path]=1
	deps=$(grep "^$path:" "$moddir/modules.dep" | cut -d: -f2)
	for dep in $deps; do add_module "$dep"; done
	order+=("$path")
}
for m in "${modules[@]}"; do
	# Built-in modules have no file; modules.builtin lists them.
	path=$(cd "$moddir" && find kernel -name "$m.ko*" | head -1)
	if [[ -z $path ]]; then
		grep -q "/${m//-/[-_]}.ko" "$moddir/modules.builtin" || die "module $m is neither in $kpkg nor built in"
		continue
	fi
	add_module "$path"
done

root=$work/initramfs
mkdir -p "$root"/{busybox,modules,proc,sys,dev,tmp,run,usr,etc,root,var,mnt}
cp "$work/busybox/bin/busybox" "$root/busybox/busybox"
# A merged-/usr layout, so the host's /usr mounted in L1 provides /bin, /lib and /lib64.
for d in bin sbin lib lib64; do ln -s "usr/$d" "$root/$d"; done
for path in "${order[@]}"; do
	name=$(basename "$path")
	case $name in
	*.ko.xz) xz -dc "$moddir/$path" >"$root/modules/${name%.xz}" ;;
	*.ko.zst) zstd -qdc "$moddir/$path" >"$root/modules/${name%.zst}" ;;
	*) cp "$moddir/$path" "$root/modules/$name" ;;
	esac
	basename "${name%%.ko*}" >>"$root/modules/order"
done
install -m 0755 "$here/init" "$root/init"
install -m 0755 "$here/runjob" "$root/runjob"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1 >"$work/initramfs.gz")
mkdir -p "$out.tmp"
cp "$work/kernel/boot/vmlinuz-$kver" "$out.tmp/vmlinuz"
mv "$work/initramfs.gz" "$out.tmp/initramfs.gz"
echo "$kpkg $meta_version, busybox-static $bb_version, modules: $(tr '\n' ' ' <"$root/modules/order")" >"$out.tmp/manifest"
rm -rf "$out"
mv "$out.tmp" "$out"
log "L1 image cached in $out"
echo "$out"
