# The seed's Docker-in-Sandbox demo (../../shared/reference/vm-sandboxes.txt), run
# through vmm_sandbox on this host, offline. What differs from the seed's text:
# - the import, and no Modal app;
# - the image: build/rootfs-docker.ext4 (`make rootfs-docker`: Debian with docker.io and
#   the base image local/debian:bookworm preloaded) instead of one built from a registry;
# - the Dockerfile: no registry and no internet here, so it starts FROM the preloaded
#   base image, fetches its "cow" from a local HTTP server (DEMO_FETCH_URL, which the
#   sandbox reaches through its network) and COPYs a small cowsay of its own;
# - the shell hint names `vmm shell`.
#
#   DEMO_FETCH_URL=http://HOST:PORT/docker.cow python docker_demo.py
#   (as root, in a checkout with build/vmlinux and build/rootfs-docker.ext4, after
#   `vmm net setup`; VMM_DOCKER_IMAGE names another image)
import os
import sys

import vmm_sandbox as modal

FETCH_URL = os.environ.get("DEMO_FETCH_URL", "")

# What `cowsay -f docker.cow` prints here: the message in a bubble, then the cow file.
COWSAY = r"""#!/bin/bash
cow=/usr/share/cowsay/cows/docker.cow
[ "$1" = -f ] && shift 2
msg="$*"
line=$(printf '%*s' $((${#msg} + 2)) '' | tr ' ' '_')
echo " $line"
echo "< $msg >"
echo " ${line//_/-}"
echo '    \'
echo '     \'
cat "$cow"
"""


# The image for the Sandbox, with Docker installed.
def create_modal_sandbox_image():
    return modal.Image.from_path(os.environ.get("VMM_DOCKER_IMAGE", "build/rootfs-docker.ext4"))


def main():
    if not FETCH_URL:
        sys.exit("set DEMO_FETCH_URL to a file the sandbox can fetch over HTTP (offline demo)")
    print("Creating sandbox")

    with modal.enable_output():
        sb = modal.Sandbox.create(
            "/usr/bin/dockerd",
            "-D",
            timeout=60 * 60,
            image=create_modal_sandbox_image(),
        )

    print(f"sandbox_id: {sb.object_id}")
    print(f"To shell into the sandbox, run: vmm shell --api-sock {sb.api_socket}")
    # dockerd is the sandbox entrypoint and takes a moment to bind
    # /var/run/docker.sock after the sandbox is created. Poll until the
    # daemon answers so the first `docker build` doesn't run before dockerd is ready.
    print("Waiting for dockerd to be ready")
    wait_p = sb.exec(
        "sh",
        "-c",
        "for i in $(seq 1 120); do "
        "if [ -S /var/run/docker.sock ] && docker info >/dev/null 2>&1; then "
        "echo ready; exit 0; fi; sleep 1; done; "
        "echo 'dockerd not ready after 120s' >&2; exit 1",
    )
    wait_p.wait()
    if wait_p.returncode != 0:
        raise Exception(f"dockerd never became ready: {wait_p.stderr.read()}")

    # A simple Dockerfile that we'll build and run within the sandbox.
    dockerfile = f"""
    FROM local/debian:bookworm
    RUN mkdir -p /usr/share/cowsay/cows/ /usr/games
    RUN curl -fsS -o /usr/share/cowsay/cows/docker.cow {FETCH_URL}
    COPY cowsay /usr/games/cowsay
    ENTRYPOINT ["/usr/games/cowsay", "-f", "docker.cow"]
    """
    sb.filesystem.write_text(dockerfile, "/build/Dockerfile")
    sb.filesystem.write_text(COWSAY, "/build/cowsay", mode=0o755)

    print("Building docker image")
    p = sb.exec("docker", "build", "-t", "whalesay", "/build")
    for l in p.stdout:
        print(l, end="")
    p.wait()
    print("--------------------------------")
    if p.returncode != 0:
        print(p.stderr.read())
        raise Exception("Docker build failed")

    # The Sandbox will run a container from the built image and print this:
    #
    #  ________
    # < Hello! >
    #  --------
    #     \
    #      \
    # (the cow file the build fetched)

    print("Running Docker image")
    # Note we can't use -it here because we're not in a TTY.
    p = sb.exec("docker", "run", "--rm", "whalesay", "Hello!")
    print(p.stdout.read())
    p.wait()
    if p.returncode != 0:
        raise Exception(f"Docker run failed: {p.stderr.read()}")
    sb.terminate()

if __name__ == "__main__":
    main()
