"""The second shipped pair (models/text/): a transformer teacher and its distilled student on
the marker-order task, two INT64 inputs with dynamic batch and sequence axes. The committed files
load, keep every axis dynamic, score what the registry says on the committed test split, and give
a padded row the answer of the unpadded one; the rule needs order (a bag of words is at chance);
the build is reproducible (e2e)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from controller.local.demo import run_demo
from controller.rollout import EXIT_PROMOTED, EXIT_ROLLED_BACK
from gateway.config import load_settings
from models import REGISTRY_PATH
from models import registry as reg
from models.text import (
    PAIR,
    TEXT_GATEWAY_CONFIG_PATH,
    TEXT_STUDENT_PATH,
    TEXT_TEACHER_PATH,
    TEXT_TEST_SPLIT_PATH,
)
from models.text.build import multiply_adds
from models.text.data import (
    ATTENTION_MASK,
    INPUT_IDS,
    MAX_LENGTH,
    NUM_CLASSES,
    OUTPUT_NAME,
    VOCAB_SIZE,
    TextSplit,
    label_of,
    load_splits,
    load_test_split,
)
from models.text.nets import student_net, teacher_net
from models.text.onnx_io import accuracy_by_class
from tests.rollouts import write_policy

SECTION: dict[str, Any] = reg.load(REGISTRY_PATH)["pairs"][PAIR]
MODELS: dict[str, Any] = SECTION["models"]
FP32 = ["teacher", "student", "student_bad"]
PADDING_TOLERANCE = 1e-5  # a padded row sums its attention over more (zero) terms: rounding only


@pytest.fixture(scope="module")
def test_split() -> TextSplit:
    return load_test_split(TEXT_TEST_SPLIT_PATH)


def _session(name: str) -> ort.InferenceSession:
    path = REGISTRY_PATH.parent / MODELS[name]["file"]
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _run(session: ort.InferenceSession, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.asarray(session.run([OUTPUT_NAME], {INPUT_IDS: ids, ATTENTION_MASK: mask})[0])


@pytest.mark.parametrize("name", list(MODELS))
def test_the_registry_describes_the_committed_files(name: str) -> None:
    entry = MODELS[name]
    path = REGISTRY_PATH.parent / entry["file"]
    assert entry["id"] == reg.content_hash(path) and entry["file_bytes"] == path.stat().st_size
    assert reg.find(reg.load(REGISTRY_PATH), entry["id"]) == entry  # a gateway finds it by id
    assert all(entry["latency_ms"][batch] > 0 for batch in ("batch_1", "batch_64"))


@pytest.mark.parametrize("name", FP32)
def test_the_exported_graph_declares_both_axes_dynamic(name: str) -> None:
    graph = onnx.load(str(REGISTRY_PATH.parent / MODELS[name]["file"])).graph
    inputs = {i.name: i.type.tensor_type for i in graph.input}
    assert list(inputs) == [INPUT_IDS, ATTENTION_MASK]
    for tensor in inputs.values():
        assert tensor.elem_type == onnx.TensorProto.INT64
        assert [d.dim_param for d in tensor.shape.dim] == ["batch", "seq"]
        assert not any(d.HasField("dim_value") for d in tensor.shape.dim)
    (logits,) = graph.output
    assert (
        logits.name == OUTPUT_NAME and logits.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    )
    assert logits.type.tensor_type.shape.dim[0].dim_param == "batch"


@pytest.mark.parametrize("name", list(MODELS))
def test_every_batch_size_and_length_runs(name: str) -> None:
    """Lengths the build never trained on, shorter and longer, included: nothing is fixed."""
    session = _session(name)
    rng = np.random.default_rng(1)
    for batch, length in ((1, 1), (1, 40), (3, 5), (17, 100), (64, 128)):
        ids = rng.integers(1, VOCAB_SIZE, (batch, length)).astype(np.int64)
        logits = _run(session, ids, np.ones_like(ids))
        assert logits.shape == (batch, NUM_CLASSES) and np.isfinite(logits).all()


@pytest.mark.parametrize("name", list(MODELS))
def test_accuracies_in_the_registry_reproduce_on_the_committed_split(
    name: str, test_split: TextSplit
) -> None:
    entry = MODELS[name]
    accuracy, per_class = accuracy_by_class(REGISTRY_PATH.parent / entry["file"], test_split)
    assert accuracy == entry["test_accuracy"] and per_class == entry["per_class_accuracy"]
    assert len(test_split.y) == SECTION["dataset"]["test_examples"]


def test_the_pair_meets_its_targets() -> None:
    teacher, student = MODELS["teacher"], MODELS["student"]
    bad, int8 = MODELS["student_bad"], MODELS["student_int8"]
    assert teacher["test_accuracy"] >= 0.97
    assert teacher["test_accuracy"] - student["test_accuracy"] <= 0.05
    assert min(student["per_class_accuracy"].values()) >= 0.85  # every class learnt, not three
    assert bad["test_accuracy"] <= student["test_accuracy"] - 0.1  # bad enough to roll back
    assert student["test_accuracy"] - int8["test_accuracy"] <= 0.01
    assert int8["lineage"]["parent_id"] == student["id"]
    assert student["lineage"]["teacher_id"] == teacher["id"]


def test_the_rule_needs_order_a_bag_of_words_is_at_chance(test_split: TextSplit) -> None:
    lengths = test_split.attention_mask.sum(1)
    assert [
        label_of(ids[:n]) for ids, n in zip(test_split.input_ids, lengths, strict=True)
    ] == list(test_split.y)
    assert np.bincount(test_split.y).min() >= 0.2 * len(test_split.y)  # balanced classes
    assert SECTION["dataset"]["bag_of_words_accuracy"] < 0.32  # 4 classes: 0.25 is chance
    assert SECTION["dataset"]["hash"] == load_splits().dataset_hash  # the split regenerates


@pytest.mark.parametrize("name", FP32)
def test_padding_does_not_change_a_rows_answer(name: str, test_split: TextSplit) -> None:
    """The gateway batches by right-padding to the longest request: each of 40 test rows alone
    at its own length, and padded to 128 with random ids under a 0 mask, in one batch."""
    session = _session(name)
    rows = range(40)
    lengths = test_split.attention_mask.sum(1)
    alone = np.concatenate([
        _run(session, test_split.input_ids[i : i + 1, : lengths[i]],
             test_split.attention_mask[i : i + 1, : lengths[i]])
        for i in rows
    ])  # fmt: skip
    rng = np.random.default_rng(2)
    ids = rng.integers(1, VOCAB_SIZE, (len(rows), 128)).astype(np.int64)
    mask = np.zeros_like(ids)
    for i in rows:
        ids[i, : lengths[i]] = test_split.input_ids[i, : lengths[i]]
        mask[i, : lengths[i]] = 1
    padded = _run(session, ids, mask)
    assert np.abs(padded - alone).max() <= PADDING_TOLERANCE


def test_the_teacher_costs_over_ten_times_the_student() -> None:
    """Counted (multiply-adds of one sequence of the task's longest) and timed here: the files
    run in alternating rounds, each keeping its fastest call, so load meets both."""
    ratio = multiply_adds(teacher_net(), MAX_LENGTH) / multiply_adds(student_net(), MAX_LENGTH)
    assert ratio >= 10 and ratio == pytest.approx(SECTION["compute"]["ratio"])
    sessions = {name: _session(name) for name in ("teacher", "student")}
    ids = np.random.default_rng(3).integers(1, VOCAB_SIZE, (16, MAX_LENGTH)).astype(np.int64)
    fastest = dict.fromkeys(sessions, float("inf"))
    for round_ in range(6):
        for name, session in sessions.items():
            for _ in range(3):
                start = time.perf_counter()
                _run(session, ids, np.ones_like(ids))
                if round_ > 0:
                    fastest[name] = min(fastest[name], time.perf_counter() - start)
    assert fastest["teacher"] >= 5 * fastest["student"], fastest


def test_the_shipped_gateway_config_serves_the_pair_with_a_length_bound() -> None:
    """models/text/gateway.yaml, as `distill-gateway --config` reads it (the demo's --pair text
    runs it): the pair's files, warm-up ids inside the vocabulary, at most 128 tokens."""
    settings = load_settings(TEXT_GATEWAY_CONFIG_PATH)
    assert settings.model == PAIR
    assert getattr(settings.teacher, "path", None) == TEXT_TEACHER_PATH
    assert getattr(settings.student, "path", None) == TEXT_STUDENT_PATH
    assert settings.inputs[INPUT_IDS].warmup_range == (0, VOCAB_SIZE - 1)
    for name in (INPUT_IDS, ATTENTION_MASK):
        assert settings.inputs[name].max_shape == [-1, 128]
    assert settings.inputs[INPUT_IDS].value_range == (0, VOCAB_SIZE - 1)
    assert settings.inputs[ATTENTION_MASK].value_range == (0, 1)


class _Build(subprocess.Popen[str]):
    def wait_done(self) -> subprocess.CompletedProcess[str]:
        stdout, stderr = self.communicate(timeout=600)
        return subprocess.CompletedProcess(self.args, self.returncode, stdout, stderr)


def _start_build(out: Path, *options: str) -> _Build:
    """``distill-models build-text`` into ``out``, started, not awaited: two builds share the
    machine's two cores (each trains on one thread)."""
    return _Build(
        [sys.executable, "-m", "models.cli", "build-text", "--out-dir", str(out),
         "--cache-dir", str(out / "cache"), *options],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


@pytest.mark.e2e  # trains with torch in subprocesses
def test_two_text_builds_write_identical_files_and_a_short_one_says_it_missed(
    tmp_path: Path,
) -> None:
    """A short recipe (1 teacher epoch, 2 per student): the same code paths as the real one."""
    torch.set_num_threads(1)
    recipe = ("--teacher-epochs", "1", "--student-epochs", "2")
    first, second = (_start_build(tmp_path / "a", *recipe),
                     _start_build(tmp_path / "b", *recipe, "--no-enforce-targets"))  # fmt: skip
    short, again = first.wait_done(), second.wait_done()
    assert short.returncode == 1 and "NO" in short.stdout, short.stdout + short.stderr
    assert again.returncode == 0, again.stdout + again.stderr
    a, b = tmp_path / "a" / PAIR, tmp_path / "b" / PAIR
    names = ("teacher.onnx", "student.onnx", "student_bad.onnx", "student.int8.onnx", "test.npz")
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    sections = [json.loads((d / "registry.json").read_text())["pairs"][PAIR]
                for d in (tmp_path / "a", tmp_path / "b")]  # fmt: skip
    for section in sections:  # latencies are timings, not results
        for entry in section["models"].values():
            del entry["latency_ms"]
    assert sections[0] == sections[1]


@pytest.mark.e2e  # the demo's own code path: gateways and two rollouts by the real controller
def test_the_demo_on_the_text_pair_promotes_its_student_and_rolls_back_the_bad_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`distill-demo --pair text` with a faster policy: the text split's rows, each at its own
    length, through a real gateway on models/text/gateway.yaml at every share, none failing;
    then the student promoted to 100 % and the bad student rolled back by its gates."""
    outcomes = run_demo(write_policy(tmp_path), requests_per_share=200, pair_name="text")
    printed = capsys.readouterr().out
    assert [(o.student, o.exit_code, o.final_share) for o in outcomes] == [
        ("student.onnx", EXIT_PROMOTED, 1.0),
        ("student_bad.onnx", EXIT_ROLLED_BACK, 0.0),
    ]
    assert outcomes[1].last_line.startswith("rollout RolledBack")
    assert "min_agreement" in outcomes[1].last_line
    assert "replaying the text test split" in printed
    assert printed.count("200 requests, 0 errors") == 4  # shares 0, 5, 25 and 100 %
