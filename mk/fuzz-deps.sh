#!/usr/bin/env bash
# What `make fuzz` needs besides the test packages: the nightly toolchain (sanitizer
# flags) and cargo-fuzz, installed from crates.io when missing.
#
# usage: mk/fuzz-deps.sh
set -euo pipefail
cargo_fuzz_version=0.13.2

if ! cargo +nightly --version >/dev/null 2>&1; then
	echo "fuzz-deps: the nightly toolchain is missing: rustup toolchain install nightly" >&2
	exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
	echo "== fuzz-deps: installing cargo-fuzz $cargo_fuzz_version (cargo install --locked; a few minutes) =="
	cargo install cargo-fuzz --locked --version "$cargo_fuzz_version"
fi
