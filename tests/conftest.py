from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from controller.local.processes import RedisProcess
from models import STUDENT_PATH, TEACHER_PATH, TEST_SPLIT_PATH
from models.data import Split, load_test_split
from tests.image_build import start_in_background
from tests.servers import RedisFleet, TestGateway

StartGateway = Callable[..., TestGateway]

# Fixtures that start real servers (a gateway process, and through it Triton or Prometheus).
REAL_SERVER_FIXTURES = frozenset({"gateway", "start_gateway", "fresh_gateway", "redis_server"})


IMAGE = "localhost/distill-gateway:cpu-test"
IMAGE_BUILD = pytest.StashKey[tuple[subprocess.Popen[bytes], Path]]()


def pytest_collection_finish(session: pytest.Session) -> None:
    """When the image tests are selected, their build starts now, in the background at the
    lowest priority, so its minute and a half overlaps the other tests (tests/image_build.py)."""
    if any(item.nodeid.startswith("tests/test_image.py") for item in session.items):
        work_dir = Path(tempfile.mkdtemp(prefix="distill-image-"))
        session.config.stash[IMAGE_BUILD] = (start_in_background(work_dir, IMAGE), work_dir)


def pytest_sessionfinish(session: pytest.Session) -> None:
    build = session.config.stash.get(IMAGE_BUILD, None)
    if build is not None and build[0].poll() is None:
        build[0].kill()
        build[0].wait()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that start real servers are ``e2e``: by the fixtures they use, or by a module's own
    ``pytestmark``. ``pytest -m "not e2e"`` is the developer's quick loop; CI runs everything."""
    for item in items:
        if REAL_SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def test_split() -> Split:
    return load_test_split(TEST_SPLIT_PATH)


def _direct(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: session.run(["logits"], {"pixels": x})[0]


@pytest.fixture(scope="session")
def teacher_direct() -> Callable[[np.ndarray], np.ndarray]:
    """The teacher run by ONNX Runtime directly, bypassing the gateway: the reference."""
    return _direct(TEACHER_PATH)


@pytest.fixture(scope="session")
def student_direct() -> Callable[[np.ndarray], np.ndarray]:
    return _direct(STUDENT_PATH)


def _gateway_starter(tmp: Path) -> tuple[StartGateway, list[TestGateway]]:
    started: list[TestGateway] = []

    def start(config: dict[str, Any] | None = None, **kwargs: Any) -> TestGateway:
        gateway = TestGateway(tmp, config, **kwargs).start()
        started.append(gateway)
        return gateway

    return start, started


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    """A real Redis (Debian's redis-server) for the fleet tests; each test keys its own prefix."""
    server = RedisProcess(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_fleet(
    redis_server: RedisProcess, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[RedisFleet]:
    """Replicas sharing ``redis_server`` under a key prefix of this test's own, stopped after it."""
    prefix = f"test-{request.node.name}"[:60].replace("[", "-").replace("]", "")
    fleet = RedisFleet(redis_server.url, tmp_path, prefix)
    yield fleet
    fleet.stop()


@pytest.fixture(scope="module")
def start_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartGateway]:
    """Starts gateways that live until the end of the module that started them: a 2-core
    machine should not carry every earlier module's idle gateways (some polling Tritons)."""
    start, started = _gateway_starter(tmp_path_factory.mktemp("gateways"))
    yield start
    for gateway in started:
        gateway.stop()


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestGateway]:
    """The default gateway (shipped pair, share 0), shared by the whole session; tests that
    change it restore it."""
    start, started = _gateway_starter(tmp_path_factory.mktemp("default-gateway"))
    yield start({"shadow": {"sample_rate": 0.0}})
    for each in started:
        each.stop()


@pytest.fixture
def fresh_gateway(start_gateway: StartGateway) -> Callable[..., TestGateway]:
    """For tests that read absolute metric values: a gateway of their own."""
    return start_gateway
