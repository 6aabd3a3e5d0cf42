#!/usr/bin/env bash
# Build an ext4 root image for vmm guests without mounting anything: the content is
# assembled in a staging directory and written with `mkfs.ext4 -d`.
set -euo pipefail

suite=bookworm
# minbase has no init; systemd-sysv provides /sbin/init for images booted without the
# agent as PID 1 (and systemd is something guests are expected to run).
# socat speaks AF_VSOCK (VSOCK-CONNECT / VSOCK-LISTEN) for guest-side vsock work.
packages=(bash coreutils util-linux mount e2fsprogs procps iproute2 ca-certificates systemd-sysv socat)
mirror=${VMM_DEBIAN_MIRROR:-http://deb.debian.org/debian}
cache=${VMM_CACHE_DIR:-$HOME/.cache/vmm}/rootfs
hostname=vmm-guest

# The Docker image (--docker) adds these, and a base image for offline builds.
docker_packages=(docker.io iptables)
docker_base=local/debian:bookworm
docker_base_packages=(ca-certificates curl)

usage() {
	cat <<EOF
usage: $0 --out FILE [--size SIZE] [--from-dir DIR | --from-tar FILE] [--agent PATH]
          [--docker]

Writes an ext4 root filesystem image to FILE (via a temp file and rename).

  --out FILE       image to write, e.g. build/rootfs.ext4
  --size SIZE      image size: 512M, 2G, or a number of MiB (default 2G; 8G with
                   --docker); the image is sparse
  --from-dir DIR   use the content of DIR as the root filesystem
  --from-tar FILE  use the content of a tar archive (any compression tar detects),
                   e.g. the output of \`docker export\`
  --agent PATH     install PATH as /sbin/vmm-agent (mode 0755)
  --docker         the Debian image plus ${docker_packages[*]}, with $docker_base
                   (debootstrap minbase + ${docker_base_packages[*]}) preloaded into
                   /var/lib/docker by the image's own dockerd, run once in a chroot
  -h, --help       show this help

Without --from-dir/--from-tar the content is Debian $suite (debootstrap
--variant=minbase plus: ${packages[*]}).
The debootstrap tree and the finished Debian image are cached in
$cache (VMM_CACHE_DIR); delete it to pick up newer Debian packages.
Mirror: VMM_DEBIAN_MIRROR (default http://deb.debian.org/debian).
EOF
}

log() { echo "rootfs: $*"; }
die() {
	echo "rootfs: error: $*" >&2
	exit 1
}

out="" size="" from_dir="" from_tar="" agent="" docker=""
while (($#)); do
	opt=$1
	case $opt in
	--*=*) set -- "${opt%%=*}" "${opt#*=}" "${@:2}"; continue ;;
	-h | --help) usage; exit 0 ;;
	--docker) docker=1; shift; continue ;;
	--out | --size | --from-dir | --from-tar | --agent)
		(($# >= 2)) || die "$opt needs a value (see --help)"
		case $opt in
		--out) out=$2 ;;
		--size) size=$2 ;;
		--from-dir) from_dir=$2 ;;
		--from-tar) from_tar=$2 ;;
		--agent) agent=$2 ;;
		esac
		shift 2 ;;
	*) die "unknown argument: $opt (see --help)" ;;
	esac
done

# --- Validate every input before doing any work ---
[[ -n $out ]] || die "--out FILE is required (see --help)"
[[ -z $from_dir || -z $from_tar ]] || die "--from-dir and --from-tar are mutually exclusive"
[[ -z $docker || -z $from_dir$from_tar ]] || die "--docker builds the Debian image: not with --from-dir/--from-tar"
[[ -n $size ]] || size=$([[ -n $docker ]] && echo 8G || echo 2G)
[[ -z $docker ]] || packages+=("${docker_packages[@]}")
[[ $size =~ ^([0-9]+)([MmGg]([Ii][Bb])?)?$ ]] || die "bad --size '$size': use e.g. 512M, 2G or a number of MiB"
size_mib=$((10#${BASH_REMATCH[1]}))
[[ ${BASH_REMATCH[2]} != [Gg]* ]] || size_mib=$((size_mib * 1024))
((size_mib > 0)) || die "bad --size '$size': must be more than 0"
if [[ -n $from_dir ]]; then
	[[ -d $from_dir ]] || die "--from-dir: $from_dir is not a directory"
fi
if [[ -n $from_tar ]]; then
	[[ -f $from_tar && -r $from_tar ]] || die "--from-tar: cannot read $from_tar"
	tar -tf "$from_tar" >/dev/null 2>&1 || die "--from-tar: $from_tar is not a readable tar archive"
fi
if [[ -n $agent ]]; then
	[[ -f $agent && -r $agent ]] || die "--agent: cannot read $agent"
fi
[[ -d $(dirname "$out") ]] || mkdir -p "$(dirname "$out")"
command -v mkfs.ext4 >/dev/null || die "mkfs.ext4 not found; run: apt-get install -y e2fsprogs"

# Room ext4 itself takes at a given image size: the journal mke2fs picks for that size,
# plus inode tables and bitmaps (up to ~6.5%: below 512 MiB mke2fs uses one inode per
# 4 KiB). The content gets 10% slack so the guest starts with some free space.
fits() {
	local s=$1 journal
	journal=$((s < 128 ? 4 : s < 1024 ? 16 : s < 2048 ? 32 : s < 16384 ? 64 : s < 32768 ? 128 : 512))
	((content_mib * 11 / 10 + journal + s * 7 / 100 + 1 <= s))
}
# check_size DIR: fail, naming the minimum, unless DIR's content fits in --size.
check_size() {
	content_mib=$(du -sm "$1" | cut -f1)
	files=$(find "$1" | wc -l)
	fits "$size_mib" && return
	local min_mib=$((content_mib + 5))
	until fits "$min_mib"; do min_mib=$((min_mib + min_mib / 100 + 1)); done
	die "--size $size is too small for $content_mib MiB of content; need at least ${min_mib}M"
}

sha() { sha256sum | cut -c1-16; }

# Every agent build makes a new image key, so old entries would fill the disk: keep
# the N most recently used files matching a pattern (a cache hit refreshes the mtime).
prune_cache() {
	local keep=$1 pattern=$2
	find "$cache" -maxdepth 1 -name "$pattern" -printf '%T@ %p\n' | sort -rn |
		tail -n +$((keep + 1)) | cut -d' ' -f2- | while read -r stale; do
		log "pruning stale cache entry $stale"
		rm -f "$stale"
	done
}
mkdir -p "$cache"
work=$(mktemp -d "$cache/.work.XXXXXX")
# --one-file-system: never descend into anything debootstrap left mounted.
trap 'rm -rf --one-file-system "$work" "$out.tmp.$$"' EXIT

# --- Debian default: debootstrap once, keep the tree as a tar keyed by its recipe ---
debian_tar() {
	local tree=$work/debootstrap
	if ! command -v debootstrap >/dev/null; then
		log "installing debootstrap"
		DEBIAN_FRONTEND=noninteractive apt-get install -y debootstrap debian-archive-keyring >/dev/null
	fi
	log "debootstrap $suite (minbase + ${packages[*]}) from $mirror; log: $cache/debootstrap.log"
	# debootstrap prints a line per package; keep the phase lines only.
	debootstrap --variant=minbase --include="$(IFS=,; echo "${packages[*]}")" \
		"$suite" "$tree" "$mirror" 2>&1 | tee "$cache/debootstrap.log" |
		grep --line-buffered -vE '^I: (Retrieving|Validating|Extracting|Unpacking|Configuring) ' |
		sed -u 's/^/rootfs:   /' || die "debootstrap failed; see $cache/debootstrap.log"
	rm -rf "$tree"/var/cache/apt/archives/*.deb "$tree"/var/lib/apt/lists/*
	tar --numeric-owner --xattrs --xattrs-include='*' -cf "$1.tmp" -C "$tree" .
	mv -f "$1.tmp" "$1"
	rm -rf --one-file-system "$tree"
}

# --- The Docker base image: a minbase tree as a tar for `docker import`, cached ---
docker_base_tar() {
	local tree=$work/docker-base
	log "debootstrap $suite (minbase + ${docker_base_packages[*]}) for $docker_base; log: $cache/debootstrap-docker-base.log"
	debootstrap --variant=minbase --include="$(IFS=,; echo "${docker_base_packages[*]}")" \
		"$suite" "$tree" "$mirror" >"$cache/debootstrap-docker-base.log" 2>&1 ||
		die "debootstrap of the Docker base image failed; see $cache/debootstrap-docker-base.log"
	rm -rf "$tree"/var/cache/apt/archives/*.deb "$tree"/var/lib/apt/lists/*
	: >"$tree/etc/resolv.conf"
	tar --numeric-owner --xattrs --xattrs-include='*' -cf "$1.tmp" -C "$tree" .
	mv -f "$1.tmp" "$1"
	rm -rf --one-file-system "$tree"
}

# Runs in fresh mount and PID namespaces (everything it mounts or starts goes with
# them): the staged image's own dockerd, chrooted into the image, imports the base
# image into the image's /var/lib/docker, then stops cleanly. No network is set up.
# Arguments: the staged root, the base tar, the image name, dockerd's log.
# shellcheck disable=SC2016
preload_script='set -eu
root=$1 tar=$2 name=$3 log=$4
# Docker unpacks layers in a chroot whose / it remounts: / must be a mount point.
mount --bind "$root" "$root"
mount -t proc proc "$root/proc"
mount -t sysfs -o ro sysfs "$root/sys"
mount --rbind /sys/fs/cgroup "$root/sys/fs/cgroup"
mount -t tmpfs -o mode=755,size=1m dev "$root/dev"
for n in "null c 1 3" "zero c 1 5" "full c 1 7" "random c 1 8" "urandom c 1 9"; do
	mknod -m 666 "$root/dev/${n%% *}" ${n#* }
done
mount -t tmpfs -o mode=755 run "$root/run"
touch "$root/run/base.tar"
mount --bind -o ro "$tar" "$root/run/base.tar"
sock=unix:///run/preload.sock
chroot "$root" dockerd -H "$sock" --storage-driver overlay2 --bridge none \
	--iptables=false --ip6tables=false --ip-masq=false >"$log" 2>&1 &
dockerd=$!
i=0
until chroot "$root" docker -H "$sock" version >/dev/null 2>&1; do
	kill -0 $dockerd 2>/dev/null || { echo "dockerd exited; its log: $log" >&2; exit 1; }
	i=$((i + 1))
	[ $i -lt 300 ] || { echo "dockerd did not answer in 60 s; its log: $log" >&2; exit 1; }
	sleep 0.2
done
chroot "$root" docker -H "$sock" import --change "CMD [\"bash\"]" /run/base.tar "$name" >/dev/null
chroot "$root" docker -H "$sock" image inspect "$name" >/dev/null
kill -TERM $dockerd
wait $dockerd || true'

image_key=""
if [[ -z $from_dir && -z $from_tar ]]; then
	tar_key=$({ echo "$suite ${packages[*]}"; declare -f debian_tar; } | sha)
	if [[ -n $docker ]]; then
		docker_base_key=$({ echo "$suite ${docker_base_packages[*]}"; declare -f docker_base_tar; } | sha)
		tar_key="$tar_key $docker_base_key"
	fi
	image_key=$({ cat "${BASH_SOURCE[0]}"; echo "$tar_key $size_mib"; [[ -z $agent ]] || sha256sum <"$agent"; } | sha)
	if [[ -f $cache/image-$image_key.ext4 ]]; then
		touch "$cache/image-$image_key.ext4"
		cp --sparse=always "$cache/image-$image_key.ext4" "$out.tmp.$$"
		mv -f "$out.tmp.$$" "$out"
		log "cache hit $image_key: wrote $out"
		exit 0
	fi
	((EUID == 0)) || die "building the Debian image needs root (debootstrap); or use --from-dir"
	from_tar=$cache/debian-$suite-${tar_key%% *}.tar
	if [[ -f $from_tar ]]; then
		touch "$from_tar"
		log "debootstrap cache hit: $from_tar"
	else
		debian_tar "$from_tar"
	fi
fi

# --- Stage the content ---
# Extracting a tar as a user would lose file ownership.
[[ -z $from_tar ]] || ((EUID == 0)) || die "--from-tar needs root to keep file owners; or use --from-dir"
stage=$work/root
mkdir "$stage"
if [[ -n $from_dir ]]; then
	check_size "$from_dir" # fail before copying a tree that cannot fit
	log "copying $from_dir"
	cp -a --reflink=auto "$from_dir/." "$stage/"
else
	log "extracting $from_tar"
	tar --numeric-owner --xattrs --xattrs-include='*' -xf "$from_tar" -C "$stage"
fi

# Write a file inside the image. rm first: the content may hold a symlink (even an
# absolute one, e.g. resolv.conf) that must not be followed out of the staging tree.
put() {
	[[ -d $stage/etc && ! -L $stage/etc ]] || die "the image's /etc is missing or a symlink"
	rm -f "$stage/$1"
	cat >"$stage/$1"
}

for d in proc sys dev run tmp; do
	[[ -e $stage/$d || -L $stage/$d ]] || mkdir -m 0755 "$stage/$d"
done
chmod 1777 "$stage/tmp"
mkdir -p "$stage/etc"
fstab="# / is mounted by the kernel (root=/dev/vda rw); nothing else."
if [[ -z $image_key ]]; then
	# Given content keeps its own files; only fill the gaps.
	[[ -s $stage/etc/hostname ]] || echo "$hostname" | put etc/hostname
	[[ -e $stage/etc/fstab || -L $stage/etc/fstab ]] || echo "$fstab" | put etc/fstab
else
	# debootstrap copies the host's hostname, hosts and resolv.conf; the image is shared.
	echo "$hostname" | put etc/hostname
	echo "$fstab" | put etc/fstab
	printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' "$hostname" | put etc/hosts
	: | put etc/resolv.conf
	# Each guest must get its own machine-id on first boot, not the one of the build.
	if [[ -e $stage/etc/machine-id ]]; then
		: | put etc/machine-id
		rm -f "$stage/var/lib/dbus/machine-id"
	fi
	# Empty root password: a person on the serial console logs in without one.
	sed -i 's/^root:[^:]*:/root::/' "$stage/etc/shadow"
fi
if [[ -n $agent ]]; then
	# /sbin is usually a relative symlink to usr/sbin (merged /usr); resolve it
	# inside the image, never on the host.
	sbin=sbin
	[[ -L $stage/sbin ]] && sbin=$(readlink "$stage/sbin") && sbin=${sbin#/}
	[[ $sbin != *..* ]] || die "the image's /sbin points outside the image"
	mkdir -p "$stage/$sbin"
	rm -f "$stage/$sbin/vmm-agent"
	install -m 0755 "$agent" "$stage/$sbin/vmm-agent"
	[[ $EUID -ne 0 ]] || chown 0:0 "$stage/$sbin/vmm-agent"
	log "installed $agent as /sbin/vmm-agent"
	# For `init = "system"`: the image's own init (systemd) boots and starts the agent.
	if [[ -d $stage/etc/systemd/system ]]; then
		put etc/systemd/system/vmm-agent.service <<'UNIT'
[Unit]
Description=vmm sandbox agent
DefaultDependencies=no
After=local-fs.target

[Service]
ExecStart=/sbin/vmm-agent --no-init
Restart=always
# The agent puts execs into a cgroup of their own beside it (a fork bomb must not
# starve it), and keeps itself out of the OOM killer's reach.
Delegate=yes
OOMScoreAdjust=-1000

[Install]
WantedBy=multi-user.target
UNIT
		mkdir -p "$stage/etc/systemd/system/multi-user.target.wants"
		ln -sf ../vmm-agent.service "$stage/etc/systemd/system/multi-user.target.wants/vmm-agent.service"
		log "enabled vmm-agent.service for images booted with their own init"
	fi
fi

if [[ -n $docker ]]; then
	base_tar=$cache/docker-base-$suite-$docker_base_key.tar
	if [[ -f $base_tar ]]; then
		touch "$base_tar"
		log "Docker base image cache hit: $base_tar"
	else
		docker_base_tar "$base_tar"
	fi
	# Debian installs dockerd in /usr/sbin; Docker's own packages (and the seed's
	# entrypoint, /usr/bin/dockerd) have it in /usr/bin.
	[[ -e $stage/usr/bin/dockerd ]] || ln -s ../sbin/dockerd "$stage/usr/bin/dockerd"
	log "preloading $docker_base into /var/lib/docker (the image's dockerd, in a chroot)"
	unshare --mount --pid --fork --propagation private sh -c "$preload_script" preload \
		"$stage" "$base_tar" "$docker_base" "$cache/dockerd-preload.log" ||
		die "preloading $docker_base failed; dockerd's log: $cache/dockerd-preload.log"
fi

# --- mkfs ---
check_size "$stage"
mkfs_opts=(-q -F -t ext4 -L rootfs -m 0 -d "$stage")
# The default ratio gives one inode per 16 KiB; small-file-heavy trees need more.
((files * 2 < size_mib * 64)) || mkfs_opts+=(-N $((files * 2)))
log "content: $content_mib MiB, $files files; writing a ${size_mib} MiB ext4 image"
truncate -s "${size_mib}M" "$out.tmp.$$"
mkfs.ext4 "${mkfs_opts[@]}" "$out.tmp.$$" || die "mkfs.ext4 failed"
e2fsck -fn "$out.tmp.$$" >/dev/null 2>&1 || die "e2fsck found errors in the new image"
if [[ -n $image_key ]]; then
	cp --sparse=always "$out.tmp.$$" "$cache/.image-$image_key.tmp"
	mv -f "$cache/.image-$image_key.tmp" "$cache/image-$image_key.ext4"
	log "cached as $cache/image-$image_key.ext4"
	# Room for the plain and the Docker image of this checkout and one other.
	prune_cache 4 'image-*.ext4'
	prune_cache 2 'debian-*.tar'
	prune_cache 2 'docker-base-*.tar'
fi
mv -f "$out.tmp.$$" "$out"
log "wrote $out ($(du -h "$out" | cut -f1) used of ${size_mib} MiB)"
