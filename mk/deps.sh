#!/usr/bin/env bash
# Installs the Debian packages that the tests, benchmarks and the emulated KVM host use,
# when root; otherwise prints the exact commands. Idempotent and quiet when all is there.
#
# QEMU comes from bookworm-backports (10.x): bookworm's QEMU 7.2 emulates SVM with bugs
# that our emulated KVM host hits (no XSETBV intercept, so no XSAVE in nested guests; L2
# triple faults and L1 wedges in long runs). The README has the measurements.
#
# usage: mk/deps.sh PACKAGE...
set -euo pipefail
min_qemu_major=10
backports_list=/etc/apt/sources.list.d/vmm-bookworm-backports.sources

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'ok installed'; }
# Empty when QEMU is missing (a fresh machine): that is not an error here.
qemu_major() { { qemu-system-x86_64 --version 2>/dev/null || true; } | sed -n '1s/^QEMU emulator version \([0-9]*\).*/\1/p'; }
has_backports() { grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; }

major=$(qemu_major)
need_qemu=$((${major:-0} < min_qemu_major))
missing=()
for p in "$@"; do
	# A too-old QEMU is replaced from backports below, not installed from bookworm first.
	[[ $need_qemu == 1 && $p == qemu-* ]] && continue
	installed "$p" || missing+=("$p")
done
((${#missing[@]} || need_qemu)) || exit 0

if [[ $(id -u) != 0 ]]; then
	echo "deps: missing:${missing[*]:+ ${missing[*]}}$( ((need_qemu)) && echo " qemu-system-x86 >= $min_qemu_major (have ${major:-none})"); run as root:" >&2
	((need_qemu)) && ! has_backports && echo "  echo 'deb http://deb.debian.org/debian bookworm-backports main' > /etc/apt/sources.list.d/bookworm-backports.list" >&2
	((${#missing[@]})) && echo "  apt-get install -y ${missing[*]}" >&2
	((need_qemu)) && echo "  apt-get install -y -t bookworm-backports qemu-system-x86 qemu-utils" >&2
	exit 1
fi
if ((need_qemu)) && ! has_backports; then
	echo "deps: adding Debian's bookworm-backports suite ($backports_list) for QEMU >= $min_qemu_major"
	cat >"$backports_list" <<SOURCES
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
fi
echo "deps: installing${missing[*]:+ ${missing[*]}}$( ((need_qemu)) && echo " qemu-system-x86 from bookworm-backports")"
apt-get update -qq
export DEBIAN_FRONTEND=noninteractive
((${#missing[@]})) && apt-get install -y -qq "${missing[@]}"
if ((need_qemu)); then
	apt-get install -y -qq -t bookworm-backports qemu-system-x86 qemu-utils
	major=$(qemu_major)
	((${major:-0} >= min_qemu_major)) || { echo "deps: error: qemu-system-x86_64 is ${major:-missing} after the install, want >= $min_qemu_major" >&2; exit 1; }
fi
