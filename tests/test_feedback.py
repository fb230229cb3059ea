"""Ground-truth feedback: accuracy per backend, joined on request ids."""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable

import httpx
import numpy as np
import pytest

from controller.local.traffic import TrafficGenerator
from gateway.errors import Conflict, NotFound, Unprocessable
from gateway.feedback import ClassLabels, PredictionStore
from models.data import Split
from tests.clock import ManualClock
from tests.fake_backend import ticket_of
from tests.servers import LABELLER, TestGateway, wait_until

Model = Callable[[np.ndarray], np.ndarray]
BODY = {"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}


def test_feedback_accuracy_equals_offline_accuracy_on_the_same_requests(
    fresh_gateway: Callable[..., TestGateway],
    test_split: Split,
    teacher_direct: Model,
    student_direct: Model,
) -> None:
    gateway = fresh_gateway({"shadow": {"sample_rate": 0}, "traffic": {"student_share": 0.5}})
    report = TrafficGenerator(gateway.url).run(requests=len(test_split.y), workers=2)
    assert not report.errors
    models = {"teacher": teacher_direct, "student": student_direct}
    for backend, model in models.items():
        rows = np.array([s.row for s in report.by_backend(backend)])
        assert len(rows) > 100  # both backends got a fair part of the traffic
        right = model(test_split.x[rows]).argmax(1) == test_split.y[rows]
        assert gateway.total("gateway_feedback_total", backend=backend) == len(rows)
        assert gateway.total("gateway_feedback_correct_total", backend=backend) == right.sum()
        for true_class in range(10):  # and class by class, by the label's class
            mine = test_split.y[rows] == true_class
            labels = {"backend": backend, "class": str(true_class)}
            assert gateway.metric("gateway_feedback_total", **labels) == mine.sum()
            assert gateway.metric("gateway_feedback_correct_total", **labels) == right[mine].sum()


def test_a_label_scores_both_backends_when_the_other_answered_on_shadow_traffic(
    fresh_gateway: Callable[..., TestGateway],
    test_split: Split,
    teacher_direct: Model,
    student_direct: Model,
) -> None:
    """The paired sample behind the accuracy gate: every request is shadowed, served by either
    backend, and its label counts which of the two real models was right on it."""
    gateway = fresh_gateway({"shadow": {"sample_rate": 1.0}, "traffic": {"student_share": 0.5}})
    x, y = test_split.x[:240], test_split.y[:240]
    with httpx.Client(base_url=gateway.url) as client:
        for row in range(len(x)):
            body = {"id": f"paired-{row}", "inputs": [{"name": "pixels", "shape": [1, 64],
                    "datatype": "FP32", "data": x[row].tolist()}]}  # fmt: skip
            assert client.post("/v2/models/digits/infer", json=body).is_success
        wait_until(lambda: gateway.metric("gateway_shadow_comparisons_total") == len(x), 20,
                   "every request compared")  # fmt: skip
        for row in range(len(x)):
            label = {"id": f"paired-{row}", "label": int(y[row])}
            scored = client.post("/v2/models/digits/feedback", json=label,
                                 headers=LABELLER).json()  # fmt: skip
            assert scored["paired"] is True
    teacher_right = teacher_direct(x).argmax(1) == y
    student_right = student_direct(x).argmax(1) == y
    expected = {
        "both_correct": teacher_right & student_right,
        "teacher_only": teacher_right & ~student_right,
        "student_only": ~teacher_right & student_right,
        "both_wrong": ~teacher_right & ~student_right,
    }
    for outcome, rows in expected.items():
        assert gateway.total("gateway_feedback_paired_total", outcome=outcome) == rows.sum()
        for true_class in range(10):  # and by the label's class
            mine = y == true_class
            assert gateway.metric("gateway_feedback_paired_total", outcome=outcome,
                                  **{"class": str(true_class)}) == rows[mine].sum()  # fmt: skip
    assert gateway.total("gateway_feedback_paired_total", outcome="teacher_only") > 0


def test_a_shadow_answer_pairs_only_a_waiting_prediction_of_the_same_shape() -> None:
    store = PredictionStore(ttl_seconds=60, max_entries=10, labels=ClassLabels(10))
    store.remember("served-by-student", "student", np.array([3, 5]))
    before = store.bytes
    assert store.pair("served-by-student", np.array([3, 6]))
    assert store.bytes == before + np.array([3, 6]).nbytes
    assert not store.pair("served-by-student", np.array([1, 1]))  # the first answer stays
    assert not store.pair("never-seen", np.array([1]))
    store.remember("one-row", "teacher", np.array([2]))
    assert not store.pair("one-row", np.array([2, 2]))
    scored = store.score("served-by-student", [3, 6])
    # The student (live) said 3, 5; the teacher (shadow) said 3, 6; the truth is 3, 6.
    assert (scored.correct, scored.total) == (1, 2)
    assert scored.by_class == {3: (1, 1), 6: (1, 0)}  # by the true class: (examples, right)
    assert scored.paired is not None
    none = {"both_correct": 0, "teacher_only": 0, "student_only": 0, "both_wrong": 0}
    assert {c: p.by_outcome() for c, p in scored.paired.items()} == {
        3: {**none, "both_correct": 1}, 6: {**none, "teacher_only": 1}}  # fmt: skip
    assert not store.pair("served-by-student", np.array([3, 6]))  # labelled already
    assert store.score("one-row", 2).paired is None


def test_feedback_errors(gateway: TestGateway) -> None:
    with httpx.Client(base_url=gateway.url) as client:
        served = client.post("/v2/models/digits/infer", json={**BODY, "id": "fb-errors-1"})
        assert served.status_code == 200

        def post(body: object) -> httpx.Response:
            return client.post("/v2/models/digits/feedback", json=body, headers=ticket_of(served))

        assert post({"id": "never-seen", "label": 3}).status_code == 403  # not its ticket
        unknown = client.post("/v2/models/digits/feedback", json={"id": "never-seen", "label": 3},
                              headers=LABELLER)  # fmt: skip
        assert unknown.status_code == 404
        bad_label = post({"id": "fb-errors-1", "label": 12})
        assert bad_label.status_code == 422 and "classes 0..9" in bad_label.json()["error"]
        for wrong, shown in (("7", "'7'"), ("three", "'three'"), ([], "none"),
                             ([1, "2"], "'2'"), (True, "True"), (2.5, "2.5")):  # fmt: skip
            answer = post({"id": "fb-errors-1", "label": wrong})
            assert answer.status_code == 400  # the wrong type for the task (issue 26)
            assert answer.json()["error"] == (
                "this model's task is classification: a label is an integer class (one per row: "
                f"[3, 7]); got {shown}"
            )
        assert post({"label": 3}).status_code == 422
        plural = post({"id": "fb-errors-1", "labels": [3]})
        assert plural.status_code == 422 and plural.json()["error"] == (
            "(body): the key is 'label' for one row or many (label: [3, 7] gives one per row, in "
            "row order), not 'labels'")  # fmt: skip
        counted = gateway.total("gateway_feedback_total")
        first = post({"id": "fb-errors-1", "label": 3})
        assert first.status_code == 200 and first.json()["backend"] == "teacher"
        # a retry of the same label (its answer was lost on the way): the same answer, not 409,
        # and counted once (trust issue item 16)
        again = post({"id": "fb-errors-1", "label": 3})
        assert again.status_code == 200 and again.json() == first.json()
        assert gateway.total("gateway_feedback_total") == counted + 1
        other = post({"id": "fb-errors-1", "label": 4})
        assert other.status_code == 409
        assert "already has a different label" in other.json()["error"]


def test_feedback_for_a_batch_takes_one_label_per_row(gateway: TestGateway) -> None:
    body = {
        "id": "fb-batch-1",
        "inputs": [{"name": "pixels", "shape": [2, 64], "datatype": "FP32", "data": [0.0] * 128}],
    }
    with httpx.Client(base_url=gateway.url, headers=LABELLER) as client:
        assert client.post("/v2/models/digits/infer", json=body).status_code == 200
        wrong_count = client.post(
            "/v2/models/digits/feedback", json={"id": "fb-batch-1", "label": 1}
        )
        assert wrong_count.status_code == 422 and "2 example(s)" in wrong_count.json()["error"]
        answer = client.post(
            "/v2/models/digits/feedback", json={"id": "fb-batch-1", "label": [1, 2]}
        )
        assert answer.status_code == 200 and answer.json()["total"] == 2


# -- the store itself, with a controllable clock -------------------------------------------


def test_predictions_expire_after_the_ttl() -> None:
    clock = ManualClock()
    store = PredictionStore(ttl_seconds=10, max_entries=100, labels=ClassLabels(10), clock=clock)
    store.remember("a", "teacher", np.array([3]))
    clock.now = 9.9
    assert store.score("a", 3).correct == 1
    store.remember("b", "student", np.array([4]))
    clock.now = 20.0
    with pytest.raises(NotFound):
        store.score("b", 4)
    assert len(store) == 0


def test_the_oldest_predictions_are_forgotten_first() -> None:
    store = PredictionStore(
        ttl_seconds=60, max_entries=2, labels=ClassLabels(10), clock=ManualClock()
    )
    for request_id in ("a", "b", "c"):
        store.remember(request_id, "teacher", np.array([1]))
    with pytest.raises(NotFound):
        store.score("a", 1)
    assert store.score("c", 2).correct == 0


def test_label_checks() -> None:
    store = PredictionStore(
        ttl_seconds=60, max_entries=10, labels=ClassLabels(10), clock=ManualClock()
    )
    store.remember("a", "teacher", np.array([1, 2]))
    with pytest.raises(Unprocessable):
        store.score("a", [1, 2, 3])
    with pytest.raises(Unprocessable):
        store.score("a", [-1, 2])
    assert store.score("a", [1, 0]).correct == 1
    with pytest.raises(Conflict):
        store.score("a", [1, 2])


def test_the_store_is_bounded_in_bytes_too() -> None:
    """Long ids and big batches: entries would stay under max_entries, memory would not."""
    budget = 200_000
    store = PredictionStore(60, 10**9, ClassLabels(10), clock=ManualClock(), max_bytes=budget)
    for n in range(2_000):
        store.remember(f"{n:0256d}", "teacher", np.zeros(64, dtype=np.int64))
    assert 0 < store.bytes <= budget
    assert 100 < len(store) < 2_000
    assert store.score(f"{1_999:0256d}", [0] * 64).total == 64  # the newest are kept
    with pytest.raises(NotFound):
        store.score(f"{0:0256d}", [0] * 64)


@pytest.mark.parametrize(("id_length", "batch"), [(32, 1), (256, 1), (32, 64)])
def test_what_the_store_charges_is_what_it_holds(id_length: int, batch: int) -> None:
    """The byte bound is only as good as the accounting: measured against the allocator."""
    store = PredictionStore(60, 10**9, ClassLabels(10), clock=ManualClock())
    count = 5_000
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(count):
            store.remember(f"{n:0{id_length}d}", "teacher", np.zeros(batch, dtype=np.int64))
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held <= store.bytes <= 1.5 * held
