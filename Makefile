# vmm: build, guest images, tests, benchmarks and the demo.
#
#   make            build the vmm (release)
#   make kernel     build/vmlinux + build/bzImage (cached in ~/.cache/vmm)
#   make agent      the static guest agent
#   make rootfs     build/rootfs.ext4 with the agent (cached)
#   make rootfs-docker  build/rootfs-docker.ext4: the same plus docker.io, iptables and
#                   the base image local/debian:bookworm for offline builds (cached)
#   make test       lint + unit + integration tests, then the real-Linux-guest tests
#                   (tier 3; in the emulated KVM host where Linux cannot boot directly)
#   make test-tier3 only the tier-3 tests
#   make test-sdk   the Python SDK (sdk/python): mypy --strict, then its pytest suite
#                   against sandboxes in the test jail (VMM_BIN=vmm_jail)
#   make test-docker-tier3  the Docker build/network/snapshot stages in real VMs
#   make bench      start-up/RSS and Linux boot against QEMU microvm, virtio-blk against
#                   pread/pwrite, virtio-net tx against write(2) to a TAP, sandbox exec
#                   and streams, TCP out of a sandbox (--net auto) against a veth,
#                   dockerd start to ready, the demo image's build, snapshot pauses
#                   with /var/lib/docker populated against the base image only, the
#                   Python SDK's create -> ready and exec round trip (against the CLI
#                   and the raw gRPC client)
#   make demo       the loop-mount example in a real VM (inside the emulated KVM host
#                   where Linux cannot boot directly; it says which)
#   make demo-jail  the same example in the test jail
#   make demo-docker  the seed's Docker demo (dockerd entrypoint, build, run, a user
#                   network, a snapshot) in a real VM, offline; prints each stage
#   make fuzz       every cargo-fuzz target for SECS seconds (default 60), one at a time

CARGO ?= cargo
# The guest agent: a static binary (glibc, crt-static) that goes into every rootfs.
AGENT_TARGET := x86_64-unknown-linux-gnu
AGENT_BIN := $(CURDIR)/target/$(AGENT_TARGET)/release/vmm-agent
AGENT ?= $(AGENT_BIN)
# Debian packages the tests and benchmarks use (the image scripts install their own;
# cpio and kmod build the emulated KVM host's initramfs; python3-venv holds the stock
# Python gRPC client of the tests, from mk/python-grpcio.sh; iproute2 and nftables are
# the host side of --net auto, socat the network benchmark's sender).
TEST_PACKAGES := gcc qemu-system-x86 qemu-utils e2fsprogs protobuf-compiler cpio kmod python3-venv \
	iproute2 nftables socat

include mk/images.mk

.PHONY: all build deps lint test test-tier3 test-sdk test-docker-tier3 bench demo demo-docker demo-jail clean agent fuzz fuzz-deps

# The images need the agent they run.
rootfs rootfs-docker: agent

agent: deps
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --release -p agent \
		--bin vmm-agent --target $(AGENT_TARGET)

all: build

build:
	$(CARGO) build --release --workspace

# Installs missing packages when root (QEMU from bookworm-backports); otherwise prints
# the exact commands. Then the pinned grpcio venv (cached) for the Python client test.
deps:
	@mk/deps.sh $(TEST_PACKAGES)
	@mk/python-grpcio.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# The integration tests drive the vmm binary of the same profile, so build it first.
# Tier 3 (real Linux guests) runs last, through tests/run-tier3: directly where `vmm
# doctor` says Linux boots, else in the emulated KVM host.
test: deps lint rootfs-selftest agent kernel rootfs rootfs-docker
	$(CARGO) build -p vmm
	$(CARGO) test --workspace -- --test-threads=2 --skip tier3_ --skip tier3docker_
	$(MAKE) --no-print-directory test-sdk
	CARGO=$(CARGO) tests/run-tier3

# The Python SDK: its venv (pytest, mypy and the SDK built from sdk/python, which
# generates its gRPC client from agent/protocol/proto; cached in ~/.cache/vmm, the SDK
# reinstalled when its sources change), mypy --strict on the installed package, then the
# pytest suite against real sandboxes in the test jail: vmm_jail stands in for `vmm run`
# (tests/src/bin/vmm_jail.rs). The same suite runs against VMs with VMM_BIN=.../vmm.
SDK_VENV = $(or $(VMM_CACHE_DIR),$(HOME)/.cache/vmm)/python-sdk
test-sdk: deps agent kernel rootfs
	$(CARGO) build -p vmm -p vmm-tests --bin vmm --bin vmm_jail
	mk/python-sdk.sh
	cd sdk/python && $(SDK_VENV)/bin/mypy --config-file pyproject.toml -p vmm_sandbox
	cd sdk/python && $(SDK_VENV)/bin/mypy --config-file pyproject.toml --python-version 3.11 tests tools
	cd sdk/python && VMM_BIN=$(CURDIR)/target/debug/vmm_jail $(SDK_VENV)/bin/python -m pytest -q tests

# Only the tier-3 tests (tests/tests/python_sdk.rs uses the SDK's venv).
test-tier3: deps agent kernel rootfs rootfs-docker
	mk/python-sdk.sh
	CARGO=$(CARGO) tests/run-tier3

# The Docker stages in real VMs (build, user network, snapshot; see tests/tests/docker.rs
# for why `make test` runs only the first Docker stage in the emulated KVM host).
test-docker-tier3: deps agent kernel rootfs-docker
	mk/python-sdk.sh
	CARGO=$(CARGO) tests/run-tier3 tier3docker_

# Linux boot against QEMU microvm runs where Linux boots: here, or in the emulated host.
bench: deps agent kernel rootfs rootfs-docker
	$(CARGO) build --release -p vmm -p vmm-tests --bins
	$(CARGO) bench -p devices --bench blk_queue
	$(CARGO) bench -p devices --bench net_queue
	VMM_BIN=$(CURDIR)/target/release/vmm $(CURDIR)/target/release/startup_bench
	VMM_BIN=$(CURDIR)/target/release/vmm $(CURDIR)/target/release/sandbox_bench
	VMM_BIN=$(CURDIR)/target/release/vmm $(CURDIR)/target/release/snapshot_bench
	mk/python-sdk.sh
	VMM_BIN=$(CURDIR)/target/release/vmm_jail $(SDK_VENV)/bin/python sdk/python/tools/bench.py
	@if target/release/vmm doctor --json | grep -q '"linux_guests_boot":true'; then \
		VMM_BIN=$(CURDIR)/target/release/vmm target/release/boot_bench; \
		VMM_BIN=$(CURDIR)/target/release/vmm target/release/snapshot_bench --linux; \
		VMM_BIN=$(CURDIR)/target/release/vmm target/release/net_bench; \
		VMM_BIN=$(CURDIR)/target/release/vmm target/release/docker_bench; \
	else \
		echo "== Linux boot bench: in the emulated KVM host (Linux cannot boot directly here) =="; \
		tests/nested/run -- env VMM_BIN=$(CURDIR)/target/release/vmm target/release/boot_bench; \
		tests/nested/run -- env VMM_BIN=$(CURDIR)/target/release/vmm target/release/snapshot_bench --linux; \
		tests/nested/run -- env VMM_BIN=$(CURDIR)/target/release/vmm target/release/net_bench; \
		tests/nested/run -- env VMM_BIN=$(CURDIR)/target/release/vmm target/release/docker_bench; \
	fi

# The seed's loop-mount example in a real VM: directly where Linux boots, else inside
# the emulated KVM host (it says which).
demo: deps agent kernel rootfs
	$(CARGO) build --release -p vmm -p vmm-tests --bins
	@doctor=$$(target/release/vmm doctor --json); \
	if echo "$$doctor" | grep -q '"linux_guests_boot":true'; then \
		echo "== this host boots Linux guests: the demo runs in a VM here =="; \
		VMM_BIN=$(CURDIR)/target/release/vmm target/release/demo vm; \
	elif echo "$$doctor" | grep -q '"linux_guests_boot_emulated":true'; then \
		echo "== this host cannot boot Linux guests directly ($$(target/release/vmm doctor | sed -n 's/^Linux guests boot: no: //p')): the demo runs in a real VM inside the emulated KVM host (tests/nested/run) =="; \
		tests/nested/run -- env VMM_BIN=$(CURDIR)/target/release/vmm target/release/demo vm; \
	else \
		target/release/vmm doctor; echo "demo: no Linux guest can boot here; try make demo-jail" >&2; exit 1; \
	fi

# The seed's Docker demo, offline, in a real VM (in the emulated KVM host where Linux
# cannot boot directly): dockerd as the entrypoint, docker build, run, a user network,
# a snapshot and a new sandbox from it; it prints each stage and its time.
demo-docker: deps agent kernel rootfs-docker
	$(CARGO) build --release -p vmm -p vmm-tests --bins
	@if target/release/vmm doctor --json | grep -q '"linux_guests_boot":true'; then \
		VMM_BIN=$(CURDIR)/target/release/vmm target/release/demo_docker; \
	else \
		echo "== Linux guests cannot boot directly here: the demo runs inside the emulated KVM host (tests/nested/run) =="; \
		tests/nested/run -- env VMM_BIN=$(CURDIR)/target/release/vmm target/release/demo_docker; \
	fi

# The same example in the test jail (no VM).
demo-jail: deps agent rootfs
	$(CARGO) build --release -p vmm -p vmm-tests --bins
	VMM_BIN=$(CURDIR)/target/release/vmm target/release/demo jail

# Fuzzing (fuzz/, its own cargo workspace, nightly + cargo-fuzz): each target runs SECS
# seconds on one core, after the other; a crash fails the run (see the README).
SECS ?= 60
FUZZ_TARGETS := blk_request vsock_packet hybrid_connect_line mmio_registers config_toml \
	agent_messages

fuzz-deps:
	@mk/fuzz-deps.sh

fuzz: deps fuzz-deps
	mk/fuzz.sh $(SECS) $(FUZZ_TARGETS)

clean:
	$(CARGO) clean
	rm -rf build
