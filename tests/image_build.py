"""Builds the CPU image for tests/test_image.py: `python -m tests.image_build WORK_DIR IMAGE`.

No container registry is reachable here, so the base is Debian bookworm made by debootstrap from
Debian's mirror (with this machine's CA bundle, so pip inside the build reaches PyPI) instead of
python:3.11-slim; everything else is deploy/docker/Dockerfile.cpu's own.

The build takes about 1.5 minutes of mostly CPU (dpkg, pip), so the test session starts it at
collection time at the lowest CPU and I/O priority (``start_in_background``): it uses the cycles
the other tests leave idle, and test_image.py waits for it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASE = "localhost/distill-base:bookworm"


def _run(*command: str, timeout: float = 900) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)}:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")


def build(work_dir: Path, image: str) -> None:
    for tool in ("podman", "debootstrap"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is installed by `make test` (Debian's {tool} package)")
    rootfs = work_dir / "rootfs"
    _run("debootstrap", "--variant=minbase", "--include=python3.11,python3.11-venv,python3-venv",
         "bookworm", str(rootfs), "http://deb.debian.org/debian")  # fmt: skip
    shutil.copy("/etc/ssl/certs/ca-certificates.crt", rootfs / "etc/ssl/certs/")
    with subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE) as tar:
        subprocess.run(["podman", "import", "-", BASE], stdin=tar.stdout, check=True,
                       capture_output=True, timeout=600)  # fmt: skip
    _run("podman", "build", "--isolation=chroot", "--build-arg", f"BASE={BASE}",
         "-f", str(ROOT / "deploy/docker/Dockerfile.cpu"), "-t", image, str(ROOT))  # fmt: skip
    shutil.rmtree(rootfs, ignore_errors=True)


def start_in_background(work_dir: Path, image: str) -> subprocess.Popen[bytes]:
    """The build at nice 19 and idle I/O priority; its output goes to ``work_dir/build.log``."""
    work_dir.mkdir(parents=True, exist_ok=True)
    with (work_dir / "build.log").open("wb") as log:
        return subprocess.Popen(
            ["nice", "-n", "19", "ionice", "-c", "3", sys.executable, "-m", "tests.image_build",
             str(work_dir), image],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip


if __name__ == "__main__":
    build(Path(sys.argv[1]), sys.argv[2])
