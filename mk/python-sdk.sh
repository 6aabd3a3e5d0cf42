#!/usr/bin/env bash
# The venv of the Python SDK's tests (make test-sdk): Debian's python3 with pytest, mypy
# (+ the grpc/protobuf type stubs) and the SDK itself, installed from sdk/python with
# `pip install`, which generates its gRPC client from agent/protocol/proto (setup.py).
# At ${VMM_CACHE_DIR:-~/.cache/vmm}/python-sdk. The tools are installed once (pinned);
# the SDK is reinstalled whenever its sources or the .proto files change (a hash of them
# is the stamp). Quiet when there is nothing to do. Prints nothing else; the venv's
# python is at $venv/bin/python3.
set -euo pipefail
cd "$(dirname "$0")/.."
python=/usr/bin/python3
venv=${VMM_CACHE_DIR:-$HOME/.cache/vmm}/python-sdk
tools="pytest==8.4.2 mypy==1.18.2 types-protobuf==6.32.1.20250918 types-grpcio==1.0.0.20250914"
tools_stamp=$venv/.installed-tools-$(echo "$tools" | sha256sum | cut -c1-16)

if ! "$python" -c 'import ensurepip, venv' 2>/dev/null; then
	echo "deps: $python with the venv module is missing: apt-get install -y python3-venv" >&2
	exit 1
fi
if [[ ! -f $tools_stamp || ! -x $venv/bin/python3 ]]; then
	echo "deps: creating the Python SDK's test venv at $venv"
	rm -rf "$venv"
	"$python" -m venv "$venv"
	# shellcheck disable=SC2086 # one word per requirement
	"$venv/bin/pip" install --quiet --disable-pip-version-check --no-input $tools
	touch "$tools_stamp"
fi

# Everything the installed package is built from (not the generated modules an
# editable install may have left in src/, nor caches).
sources=$(find sdk/python/setup.py sdk/python/pyproject.toml sdk/python/README.md \
	sdk/python/src agent/protocol/proto/agent.proto agent/protocol/proto/sandbox.proto \
	-type f -not -path '*/__pycache__/*' -not -name '*_pb2*' | sort |
	xargs sha256sum | sha256sum | cut -c1-16)
sdk_stamp=$venv/.installed-sdk-$sources
if [[ ! -f $sdk_stamp ]]; then
	echo "deps: installing the Python SDK (sdk/python) into $venv"
	rm -f "$venv"/.installed-sdk-*
	# A local directory is always rebuilt and reinstalled; its dependencies only when
	# missing.
	"$venv/bin/pip" install --quiet --disable-pip-version-check --no-input ./sdk/python
	rm -rf sdk/python/build sdk/python/src/*.egg-info
	touch "$sdk_stamp"
fi
