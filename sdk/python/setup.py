"""Build step of the vmm-sandbox package: generates its gRPC client from the API schema.

The schema lives once, in the repository (agent/protocol/proto/{sandbox,agent}.proto),
and every client is generated from it: nothing of the protocol is written by hand here.
`build_py` runs grpcio-tools' protoc into the package's `_proto` subpackage, then turns
protoc's absolute `import agent_pb2` (which only works with the output directory on
sys.path) into a package-relative import. An sdist carries a copy of the .proto files,
so it builds outside a checkout as well.

Where the .proto files are looked for, first match wins:
1. $VMM_PROTO_DIR;
2. proto/ beside this file (an sdist);
3. ../../agent/protocol/proto (this file in a checkout of the vmm repository).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from setuptools import Command, setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist
from setuptools.errors import SetupError

HERE = Path(__file__).resolve().parent
PROTOS = ("agent.proto", "sandbox.proto")
PACKAGE_DIR = Path("vmm_sandbox", "_proto")
# protoc writes `import agent_pb2 as agent__pb2`: a top-level module that does not exist
# once the files live in a package.
ABSOLUTE_IMPORT = re.compile(r"^import (\w+_pb2(?:_grpc)?) as ", re.MULTILINE)


def proto_dir() -> Path:
    """The directory holding both .proto files; a SetupError naming where it looked."""
    candidates = []
    if os.environ.get("VMM_PROTO_DIR"):
        candidates.append(Path(os.environ["VMM_PROTO_DIR"]))
    candidates += [HERE / "proto", HERE.parent.parent / "agent" / "protocol" / "proto"]
    for d in candidates:
        if all((d / p).is_file() for p in PROTOS):
            return d
    tried = ", ".join(str(d) for d in candidates)
    raise SetupError(
        f"vmm-sandbox: the API schema ({' and '.join(PROTOS)}) was not found in {tried}: "
        "build from a checkout of the vmm repository (pip install sdk/python), from an "
        "sdist of it, or set VMM_PROTO_DIR to the directory holding the .proto files"
    )


def generate(out: Path) -> None:
    """Runs protoc (grpcio-tools) for the schema into `out`, a package directory."""
    try:
        import grpc_tools
        from grpc_tools import protoc
    except ImportError as e:  # pragma: no cover - pyproject.toml requires it
        raise SetupError(f"vmm-sandbox: grpcio-tools is needed to build: {e}") from e
    src = proto_dir()
    out.mkdir(parents=True, exist_ok=True)
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{src}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *(str(src / p) for p in PROTOS),
    ]
    if protoc.main(args) != 0:
        raise SetupError(f"vmm-sandbox: protoc failed on the schema in {src}")
    # agent.proto's own service (the supervisor's client of the agent) is not ours.
    (out / "agent_pb2_grpc.py").unlink(missing_ok=True)
    for f in sorted(out.glob("*_pb2*.py*")):
        text = ABSOLUTE_IMPORT.sub(r"from . import \1 as ", f.read_text())
        if re.search(r"^import \w+_pb2", text, re.MULTILINE):
            raise SetupError(f"vmm-sandbox: {f.name} still imports a generated module absolutely")
        f.write_text(text)


class BuildPyWithProtos(build_py):  # type: ignore[misc]
    """build_py that generates vmm_sandbox._proto first (into the source tree for an
    editable install, which imports from there)."""

    def run(self) -> None:
        editable = bool(getattr(self, "editable_mode", False))
        root = HERE / "src" if editable else Path(self.build_lib)
        super().run()
        generate(root / PACKAGE_DIR)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs: list[str] = super().get_outputs(include_bytecode)
        base = Path(self.build_lib) / PACKAGE_DIR
        names = ["agent_pb2.py", "agent_pb2.pyi", "sandbox_pb2.py", "sandbox_pb2.pyi"]
        names.append("sandbox_pb2_grpc.py")
        return outputs + [str(base / n) for n in names]


class SdistWithProtos(sdist):  # type: ignore[misc]
    """sdist that carries the schema (proto/), so the sdist builds anywhere."""

    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        super().make_release_tree(base_dir, files)
        dest = Path(base_dir) / "proto"
        dest.mkdir(exist_ok=True)
        src = proto_dir()
        for p in PROTOS:
            shutil.copyfile(src / p, dest / p)


cmdclass: dict[str, type[Command]] = {"build_py": BuildPyWithProtos, "sdist": SdistWithProtos}
setup(cmdclass=cmdclass)
