"""The CPU image, built by podman from deploy/docker/Dockerfile.cpu, and its gateway run.

Two things this machine lacks are stood in for, and only those: no container registry is
reachable, so the base is Debian bookworm made by debootstrap (tests/image_build.py, started in
the background when the session begins); and `podman run` cannot set RLIMIT_NOFILE in this VM, so
the built image's filesystem is mounted and its entrypoint run with chroot, as UID 10001, over a
read-only root, as the manifests run it. Everything inside the image (the locked dependencies, the
project, the models, the user) is the Dockerfile's own. The CUDA image cannot be built here at
all: its base comes only from a registry.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from models.data import Split
from tests.conftest import IMAGE, IMAGE_BUILD
from tests.image_build import BASE
from tests.servers import free_port, wait_until

pytestmark = pytest.mark.e2e  # builds the image with podman


def _run(*command: str, timeout: float = 900) -> str:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (
        f"{' '.join(command)}:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
    )
    return result.stdout


@pytest.fixture(scope="module")
def image(request: pytest.FixtureRequest) -> Iterator[Path]:
    """Waits for the session's image build, and yields its mounted root filesystem."""
    build, work_dir = request.config.stash[IMAGE_BUILD]
    try:
        code = build.wait(timeout=1200)
        assert code == 0, (work_dir / "build.log").read_text()[-5000:]
        mounted = Path(_run("podman", "image", "mount", IMAGE).strip())
        yield mounted
    finally:
        subprocess.run(["podman", "image", "unmount", IMAGE], capture_output=True)
        subprocess.run(["podman", "rmi", "-f", IMAGE, BASE], capture_output=True)
        shutil.rmtree(work_dir, ignore_errors=True)


def test_the_image_holds_serving_code_only_and_runs_as_a_user(image: Path) -> None:
    config = _run("podman", "image", "inspect", IMAGE,
                  "--format", "{{.Config.User}} {{.Config.Entrypoint}}")  # fmt: skip
    assert config.split() == ["10001", "[distill-gateway]"]
    site = image / "opt/venv/lib/python3.11/site-packages"
    installed = {path.name.split("-")[0].lower() for path in site.iterdir()}
    assert {"onnxruntime", "fastapi", "tritonclient", "httpx"} <= installed
    assert not installed & {"torch", "matplotlib", "sklearn", "onnx", "pytest", "onnxruntime_gpu"}
    assert sorted(p.name for p in (image / "app/models").iterdir()) == [
        "student.onnx", "teacher.onnx"]  # fmt: skip
    assert not (site / "models/student_bad.onnx").exists()
    assert (site / "controller/rollout.py").exists()
    assert not (site / "controller/local").exists(), "local tooling stays out of the image"


def test_the_images_gateway_serves_both_models(
    image: Path,
    test_split: Split,
    teacher_direct: Callable[[np.ndarray], np.ndarray],
    student_direct: Callable[[np.ndarray], np.ndarray],
    tmp_path: Path,
) -> None:
    port = free_port()
    log = tmp_path / "gateway.log"
    # A private mount namespace, for /proc inside the image's root (ONNX Runtime reads cpuinfo).
    script = (f"mount -t proc proc {image}/proc && exec chroot --userspec=10001:10001 {image} "
              f"/opt/venv/bin/distill-gateway --host 127.0.0.1 --port {port}")  # fmt: skip
    with log.open("wb") as output:
        gateway = subprocess.Popen(
            ["unshare", "--mount", "--fork", "--propagation", "private", "sh", "-c", script],
            stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
            env={"PATH": os.environ["PATH"], "DISTILL_GATEWAY_ADMIN_TOKEN": "t" * 24},
        )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            assert gateway.poll() is None, log.read_text()
            try:
                return httpx.get(f"{url}/v2/health/ready").status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, 60, "the image's gateway")
        x = test_split.x[:4]
        body = {"inputs": [{"name": "pixels", "shape": [4, 64], "datatype": "FP32",
                            "data": x.reshape(-1).tolist()}]}  # fmt: skip
        for backend, direct in (("teacher", teacher_direct), ("student", student_direct)):
            answer = httpx.post(f"{url}/v2/models/digits/infer", json=body,
                                headers={"x-canary": backend})  # fmt: skip
            assert answer.status_code == 200 and answer.headers["x-served-by"] == backend
            logits = np.array(answer.json()["outputs"][0]["data"], dtype=np.float32)
            np.testing.assert_allclose(logits.reshape(4, 10), direct(x), rtol=1e-5, atol=1e-5)
        assert "gateway_requests_total" in httpx.get(f"{url}/metrics").text
    finally:
        os.killpg(gateway.pid, signal.SIGINT)  # Ctrl-C: no drain to wait for
        gateway.wait(timeout=30)
