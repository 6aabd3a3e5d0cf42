#!/usr/bin/env bash
# The stock Python gRPC client that tests/tests/python_client.rs drives: grpcio and
# grpcio-tools from PyPI, pinned, in a venv of Debian's python3 (python3-venv) at
# ${VMM_CACHE_DIR:-~/.cache/vmm}/python-grpcio. Idempotent and quiet when it is there.
#
# Not Debian's python3-grpcio: its 1.51 sends `localhost` as the :authority of a `unix:`
# target. grpcio 1.57 and later send the socket path, percent-encoded
# (`tmp%2Fsb%2Fapi.sock`), which is what the API server must accept.
set -euo pipefail
grpc_version=1.85.1
protobuf_version=7.36.2
python=/usr/bin/python3
venv=${VMM_CACHE_DIR:-$HOME/.cache/vmm}/python-grpcio
stamp=$venv/.installed-grpcio-$grpc_version-protobuf-$protobuf_version

[[ -f $stamp && -x $venv/bin/python3 ]] && exit 0
if ! "$python" -c 'import ensurepip, venv' 2>/dev/null; then
	echo "deps: $python with the venv module is missing: apt-get install -y python3-venv" >&2
	exit 1
fi
echo "deps: installing grpcio $grpc_version in a venv at $venv"
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check --no-input \
	"grpcio==$grpc_version" "grpcio-tools==$grpc_version" "protobuf==$protobuf_version"
touch "$stamp"
