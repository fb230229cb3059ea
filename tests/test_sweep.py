"""The distillation pipeline end to end on the quick grid: sweep (soft labels cached and reused,
parallel, resumable), INT8, the registry, the Pareto frontier, select, and a rollout of the
selected student through a real gateway with the real CLIs."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from controller.rollout_store import Phase
from models import REGISTRY_PATH, TEACHER_PATH
from models import registry as reg
from tests.rollouts import canary_command, run_canary, saved, traffic, write_policy
from tests.servers import BIN, TestGateway, wait_until

pytestmark = pytest.mark.e2e

QUICK_FILES = 12  # 2 T x 1 alpha x 2 architectures, each FP32 + 2 INT8
FIELDS = {"id", "file", "test_accuracy", "per_class_accuracy", "latency_ms", "parameters",
          "file_bytes", "lineage", "status"}  # fmt: skip
LINEAGE = {"teacher_id", "temperature", "alpha", "architecture", "quantization", "parent_id",
           "soft_label_cache_key", "dataset_hash", "seed"}  # fmt: skip


def _models(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "distill-models"), *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "COLUMNS": "160"})  # fmt: skip


def _workspace(tmp_path: Path) -> Path:
    """A registry holding the shipped models' entries, as a sweep finds it."""
    out = tmp_path / "models"
    out.mkdir()
    shipped = reg.load(REGISTRY_PATH)
    reg.save(out / "registry.json", {"dataset": shipped["dataset"], "models": shipped["models"]})
    return out


def _sweep(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return _models("sweep", "--quick", "--out-dir", str(out), "--cache-dir",
                   str(out / ".cache"), *extra)  # fmt: skip


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = _workspace(tmp_path_factory.mktemp("sweep"))
    result = _sweep(out)
    assert result.returncode == 0, result.stdout + result.stderr
    return out, result.stdout


def test_the_sweep_registers_every_file_with_its_numbers_and_lineage(
    swept: tuple[Path, str],
) -> None:
    out, printed = swept
    registry = reg.load(out / "registry.json")
    candidates = registry["candidates"]
    assert len(candidates) == QUICK_FILES
    teacher_id = reg.content_hash(TEACHER_PATH)
    for model_id, entry in candidates.items():
        assert entry.keys() >= FIELDS and entry["lineage"].keys() >= LINEAGE, entry
        assert reg.content_hash(out / entry["file"]) == model_id
        assert entry["lineage"]["teacher_id"] == teacher_id
        assert entry["parameters"] * 20 <= registry["models"]["teacher"]["parameters"]
        assert set(entry["per_class_accuracy"]) == {str(c) for c in range(10)}
        assert entry["latency_ms"]["batch_1"] > 0 and entry["latency_ms"]["batch_64"] > 0
        parent = entry["lineage"]["parent_id"]
        if entry["lineage"]["quantization"] == "fp32":
            assert parent is None
        else:
            assert candidates[parent]["lineage"]["quantization"] == "fp32"
            dropped = candidates[parent]["test_accuracy"] - entry["test_accuracy"] > 0.01
            assert (entry["status"] == reg.REJECTED_CONVERSION) == dropped
    kinds = sorted(e["lineage"]["quantization"] for e in candidates.values())
    assert kinds == ["fp32"] * 4 + ["int8-dynamic"] * 4 + ["int8-static"] * 4
    # one soft-label set per T, the second architecture reusing each
    assert "soft labels: 2 computed, 2 reused" in printed
    assert registry["sweep"]["soft_labels"] == {"computed": 2, "reused": 2}
    assert registry["models"]["teacher"]["id"] == teacher_id  # the shipped entries stay


def test_a_second_run_trains_nothing_and_reuses_every_soft_label(swept: tuple[Path, str]) -> None:
    out, _ = swept
    before = reg.load(out / "registry.json")["candidates"].keys()
    again = _sweep(out)
    assert again.returncode == 0, again.stderr
    assert "4 finished earlier (kept), 0 to train" in again.stdout
    assert "soft labels: 0 computed, 0 reused" in again.stdout
    assert reg.load(out / "registry.json")["candidates"].keys() == before  # the same files


def test_a_killed_sweep_resumes_without_retraining_what_finished(
    tmp_path: Path, swept: tuple[Path, str]
) -> None:
    out = _workspace(tmp_path)
    records = out / ".cache" / "sweep"
    command = [str(BIN / "distill-models"), "sweep", "--quick", "--out-dir", str(out),
               "--cache-dir", str(out / ".cache"), "--jobs", "1"]  # fmt: skip
    with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=True) as sweep:  # fmt: skip
        wait_until(lambda: records.exists() and any(records.glob("*.json")), 120,
                   "the first candidate to finish")  # fmt: skip
        os.killpg(sweep.pid, signal.SIGKILL)
    finished = {path.name: path.stat().st_mtime_ns for path in records.glob("*.json")}
    assert 1 <= len(finished) < 4

    resumed = _sweep(out)

    assert resumed.returncode == 0, resumed.stderr
    assert (
        f"{len(finished)} finished earlier (kept), {4 - len(finished)} to train" in resumed.stdout
    )
    for name, mtime in finished.items():  # not trained again: their records are untouched
        assert (records / name).stat().st_mtime_ns == mtime
    # seeded: the resumed sweep made the very files the uninterrupted one did, byte for byte
    uninterrupted = reg.load(swept[0] / "registry.json")["candidates"].keys()
    assert reg.load(out / "registry.json")["candidates"].keys() == uninterrupted


def test_pareto_marks_the_frontier_and_draws_it(swept: tuple[Path, str]) -> None:
    out, _ = swept
    result = _models("pareto", "--registry", str(out / "registry.json"))
    assert result.returncode == 0, result.stderr
    registry = reg.load(out / "registry.json")
    beaten = reg.dominated(list(registry["candidates"].values()))
    for model_id in registry["candidates"]:
        line = next(line for line in result.stdout.splitlines() if model_id in line)
        assert ("dominated" in line) == (model_id in beaten), line
    assert "best T" in result.stdout and "int8-static" in result.stdout
    png = out / "pareto.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


def test_select_prints_the_fastest_within_budget_and_the_runner_up(
    swept: tuple[Path, str],
) -> None:
    out, _ = swept
    registry = reg.load(out / "registry.json")
    result = _models("select", "--max-accuracy-drop", "0.2", "--registry",
                     str(out / "registry.json"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    chosen = result.stdout.strip()
    expected = reg.select(registry, 0.2, "latency")
    assert expected is not None and expected.runner_up is not None
    assert chosen == expected.chosen["id"]
    assert "runner-up" in result.stderr and expected.runner_up["id"] in result.stderr
    impossible = _models("select", "--max-accuracy-drop", "0", "--registry",
                         str(out / "registry.json"))  # fmt: skip
    assert impossible.returncode == 1 and "no accepted candidate" in impossible.stderr


def test_the_selected_student_is_rolled_out_through_a_real_gateway(
    swept: tuple[Path, str], tmp_path: Path
) -> None:
    out, _ = swept
    registry_path = out / "registry.json"
    chosen = _models("select", "--max-accuracy-drop", "0.2", "--registry", str(registry_path))
    model_id = chosen.stdout.strip()
    gateway = TestGateway(tmp_path, {"shadow": {"sample_rate": 0.25},
                                     "registry": str(registry_path)}).start()  # fmt: skip
    try:
        state = tmp_path / "rollout.db"
        command = canary_command([gateway], write_policy(tmp_path), state, "--student",
                                 model_id, "--registry", str(registry_path))  # fmt: skip
        with traffic(gateway):
            result = run_canary(command)
        served = httpx.get(f"{gateway.url}/admin/traffic").json()["student_id"]
    finally:
        gateway.stop()
    assert result.returncode in (0, 3), result.stdout + result.stderr
    assert served == model_id
    rollout = saved(state)
    entry = reg.find(reg.load(registry_path), model_id)
    assert rollout.student is not None and entry is not None
    assert rollout.student["id"] == model_id and rollout.student["lineage"] == entry["lineage"]
    event = {0: "promoted", 3: "rolled_back"}[result.returncode]
    assert rollout.phase is (Phase.PROMOTED if event == "promoted" else Phase.ROLLED_BACK)
    history = reg.load(registry_path)["history"]
    assert history[-1]["model_id"] == model_id and history[-1]["event"] == event
