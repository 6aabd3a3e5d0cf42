# The seed's VM demo (../../shared/reference/vm-sandboxes.txt, "VM demo"), run through
# vmm_sandbox on this host. Only the import and the app/runtime lines differ from the
# seed's text: there is no Modal app here, and every sandbox is a VM.
#
#   python loop_mount_demo.py      (as root, in a checkout with build/vmlinux and
#                                   build/rootfs.ext4, after `vmm net setup`; or set
#                                   VMM_BIN, VMM_KERNEL and VMM_IMAGE)
import vmm_sandbox as modal

with modal.enable_output():
    sb = modal.Sandbox.create(
        cpu=2,  # physical cores
        memory=4096,  # MiB
    )

# add a script that uses VM Sandbox features
sb.filesystem.write_text(
    """
  # Format an ext4 filesystem onto a regular file.
  truncate -s 100M /tmp/disk.img
  mkfs.ext4 -F /tmp/disk.img

  # Mount it. This works in a VM, but isn't supported in gVisor.
  mkdir -p /mnt/loop
  mount -o loop /tmp/disk.img /mnt/loop
""",
    "/tmp/mount_loopback_filesystem.sh",
)

p = sb.exec("bash", "/tmp/mount_loopback_filesystem.sh")
p.wait()

print(p.stdout.read())

print(p.stderr.read())

assert p.returncode == 0  # error if the program in the Sandbox fails

sb.terminate()
