"""Write k8s/requirements.lock, the pinned dependencies of the image build: `python -m k8s.lock`.

Resolves pyproject.toml's dependencies for the image (Linux x86_64, the Python of k8s/Dockerfile's base image) with
uv (`pip install uv`), preferring the versions installed in the environment that runs it: run it where the test suite
passed, and the image gets exactly the versions CI tested (and `make install` installs with the lock as constraints).
torch resolves to PyPI's Linux wheel, a CUDA build that brings its own CUDA runtime (nvidia-* packages): the GPU
nodes' driver must support that CUDA (see the lock's nvidia-cuda-runtime line; docs/kubernetes.md, "Requirements").
"""

from __future__ import annotations

import argparse
import logging
import re
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata

from k8s import K8S_DIR, REPO_ROOT

logger = logging.getLogger(__name__)

LOCK = K8S_DIR / "requirements.lock"
PLATFORM = "x86_64-manylinux_2_28"


def image_python() -> str:
    """3.11 from `FROM rayproject/ray:${RAY_VERSION}-py311-gpu`."""
    (tag,) = re.findall(r"^FROM rayproject/ray:\S*-py3(\d+)-gpu$", (K8S_DIR / "Dockerfile").read_text(), re.M)
    return f"3.{tag}"


def installed_versions() -> str:
    """`name==version` of every installed distribution, local labels (`+cpu`) dropped: uv's preferences."""
    lines = set()
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name and name != "zimage-serve":
            lines.add(f"{name}=={dist.version.split('+', 1)[0]}")
    return "\n".join(sorted(lines)) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uv", default=shutil.which("uv"), help="uv executable (default: on PATH)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.uv:
        logger.error("uv not found: pip install uv")
        return 2
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as prefs:
        prefs.write(installed_versions())
        prefs.flush()
        cmd = [args.uv, "pip", "compile", "pyproject.toml", "--quiet", "--no-annotate", "--python-version",
               image_python(), "--python-platform", PLATFORM, "--constraints", prefs.name,
               "--custom-compile-command", "python -m k8s.lock", "-o", str(LOCK)]  # fmt: skip
        out = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        # A preference that conflicts with pyproject.toml (e.g. a pin just raised): resolve without preferences.
        logger.error("%s", out.stderr.strip())
        return out.returncode
    logger.info("wrote %s", LOCK.relative_to(REPO_ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
