# Guest images: kernel (build/vmlinux, build/bzImage) and root filesystem
# (build/rootfs.ext4). Included by the top-level Makefile; needs no cargo.
# Both scripts cache their results under $VMM_CACHE_DIR (default ~/.cache/vmm), so
# the targets are phony and cheap to re-run.
#
#   make kernel
#   make rootfs [AGENT=path/to/vmm-agent] [ROOTFS_SIZE=2G]
#   make rootfs-docker [AGENT=…] [ROOTFS_DOCKER_SIZE=8G]   with docker.io and a base image
#   make rootfs-selftest

IMAGES_ROOT := $(abspath $(dir $(lastword $(MAKEFILE_LIST)))/..)
BUILD_DIR ?= $(IMAGES_ROOT)/build
ROOTFS_SIZE ?= 2G
ROOTFS_DOCKER_SIZE ?= 8G
AGENT ?=

.PHONY: kernel rootfs rootfs-docker rootfs-selftest

kernel:
	$(IMAGES_ROOT)/kernel-config/build.sh $(BUILD_DIR)

rootfs:
	$(IMAGES_ROOT)/rootfs-builder/build.sh --out $(BUILD_DIR)/rootfs.ext4 \
		--size $(ROOTFS_SIZE) $(if $(AGENT),--agent $(AGENT))

rootfs-docker:
	$(IMAGES_ROOT)/rootfs-builder/build.sh --out $(BUILD_DIR)/rootfs-docker.ext4 --docker \
		--size $(ROOTFS_DOCKER_SIZE) $(if $(AGENT),--agent $(AGENT))

rootfs-selftest:
	$(IMAGES_ROOT)/rootfs-builder/selftest.sh
