"""Shadow traffic against real backends: every sampled request compared, none delaying a client."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from gateway.shadow import compare_logits
from models.data import Split
from tests.fake_backend import Behaviour, in_process_gateway, ticket_of
from tests.servers import TestGateway, TritonProcess, wait_until

Model = Callable[[np.ndarray], np.ndarray]


def _body(x: np.ndarray) -> dict[str, Any]:
    return {"inputs": [{"name": "pixels", "shape": list(x.shape), "datatype": "FP32",
                        "data": x.reshape(-1).tolist()}]}  # fmt: skip


def _offline_kl(teacher: np.ndarray, student: np.ndarray) -> np.ndarray:
    p = np.exp(teacher - teacher.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    q = np.exp(student - student.max(1, keepdims=True))
    q /= q.sum(1, keepdims=True)
    return np.asarray((p * np.log(p / q)).sum(1))


def test_every_sampled_request_is_compared_exactly(
    fresh_gateway: Callable[..., TestGateway],
    test_split: Split,
    teacher_direct: Model,
    student_direct: Model,
) -> None:
    gateway = fresh_gateway({"shadow": {"sample_rate": 1.0}})
    x = test_split.x[:150]
    with httpx.Client(base_url=gateway.url) as client:
        for row in x:
            assert client.post("/v2/models/digits/infer", json=_body(row[None])).is_success

    wait_until(
        lambda: gateway.metric("gateway_shadow_comparisons_total") == len(x), 20, "comparisons"
    )
    teacher, student = teacher_direct(x), student_direct(x)
    expected_agreements = int((teacher.argmax(1) == student.argmax(1)).sum())
    assert gateway.metric("gateway_shadow_agreements_total") == expected_agreements
    assert 0.85 <= expected_agreements / len(x) <= 1.0  # a good student agrees almost always
    assert gateway.metric("gateway_shadow_kl_divergence_count") == len(x)
    np.testing.assert_allclose(
        gateway.metric("gateway_shadow_kl_divergence_sum"),
        _offline_kl(teacher, student).sum(),
        rtol=1e-3,
    )
    # Teacher served live, so the student ran in the shadow.
    shadow_calls = gateway.metric(
        "gateway_backend_duration_seconds_count", backend="student", path="shadow"
    )
    assert shadow_calls == len(x)


def test_student_served_requests_are_shadowed_on_the_teacher(
    fresh_gateway: Callable[..., TestGateway],
    test_split: Split,
    teacher_direct: Model,
    student_direct: Model,
) -> None:
    """At the 100 % step this is the only path: the teacher runs in the shadow, and KL is still
    KL(teacher || student), not the other way round (it is not symmetric)."""
    gateway = fresh_gateway({"shadow": {"sample_rate": 1.0}, "traffic": {"student_share": 1.0}})
    x = test_split.x[:60]
    with httpx.Client(base_url=gateway.url) as client:
        response = client.post("/v2/models/digits/infer", json=_body(x))
    assert response.headers["x-served-by"] == "student"
    wait_until(lambda: gateway.metric("gateway_shadow_comparisons_total") == 60, 20, "comparison")
    teacher_shadow = gateway.metric(
        "gateway_backend_duration_seconds_count", backend="teacher", path="shadow"
    )
    assert teacher_shadow == 1
    teacher, student = teacher_direct(x), student_direct(x)
    agreements = int((teacher.argmax(1) == student.argmax(1)).sum())
    assert gateway.metric("gateway_shadow_agreements_total") == agreements
    kl_sum = gateway.metric("gateway_shadow_kl_divergence_sum")
    np.testing.assert_allclose(kl_sum, _offline_kl(teacher, student).sum(), rtol=1e-3)
    assert abs(kl_sum - _offline_kl(student, teacher).sum()) > 1e-2  # the swap would show


def test_teacher_shadow_calls_that_queue_together_run_as_one_and_each_is_compared_exactly(
    fresh_gateway: Callable[..., TestGateway],
    test_split: Split,
    teacher_direct: Model,
    student_direct: Model,
) -> None:
    """Under load, comparisons for the teacher are batched; each still meets its own rows."""
    gateway = fresh_gateway({"shadow": {"sample_rate": 1.0}, "traffic": {"student_share": 1.0},
                             "overload": {"max_queue_ms": 60_000}})  # fmt: skip
    x = test_split.x[:240]

    async def load() -> None:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
            for start in range(0, len(x), 16):  # 16 at once, one row each
                rows = x[start : start + 16]
                answers = await asyncio.gather(*(client.post(
                    "/v2/models/digits/infer", json=_body(row[None])) for row in rows))  # fmt: skip
                assert all(a.headers["x-served-by"] == "student" for a in answers)

    asyncio.run(load())
    wait_until(lambda: gateway.metric("gateway_shadow_comparisons_total") == len(x), 20,
               "every comparison")  # fmt: skip
    teacher, student = teacher_direct(x), student_direct(x)
    assert gateway.metric("gateway_shadow_agreements_total") == int(
        (teacher.argmax(1) == student.argmax(1)).sum())  # fmt: skip
    np.testing.assert_allclose(gateway.metric("gateway_shadow_kl_divergence_sum"),
                               _offline_kl(teacher, student).sum(), rtol=1e-3)  # fmt: skip
    alone = gateway.metric("gateway_backend_duration_seconds_count", backend="teacher",
                           path="shadow")  # fmt: skip
    batched_rows = gateway.metric("gateway_shadow_batch_size_sum", backend="teacher")
    batches = gateway.metric("gateway_shadow_batch_size_count", backend="teacher")
    assert alone + batched_rows == len(x)  # every comparison in exactly one call
    assert batches >= 1 and alone + batches < len(x)  # and fewer calls than comparisons
    timed = gateway.metric("gateway_shadow_batch_duration_seconds_bucket", backend="teacher",
                           le="+Inf")  # fmt: skip
    assert timed == batches
    print(f"{len(x)} comparisons in {alone + batches:.0f} teacher calls")


def test_batches_respect_max_batch_size_and_the_students_shadow_calls_run_alone() -> None:
    async def scenario() -> None:
        async with in_process_gateway(shadow={"sample_rate": 1.0, "max_batch_size": 8},
                                      traffic={"student_share": 1.0},
                                      overload={"max_queue_ms": 60_000}) as gateway:  # fmt: skip
            gateway.teacher.behaviour, gateway.teacher.delay = Behaviour.SLOW, 0.02
            answers = await asyncio.gather(*(gateway.infer() for _ in range(30)))
            assert all(a.headers["x-served-by"] == "student" for a in answers)
            await gateway.service.shadow.drain()
            assert gateway.metric("gateway_shadow_comparisons_total") == 30
            batches = gateway.metric("gateway_shadow_batch_size_count", backend="teacher")
            within = gateway.metric("gateway_shadow_batch_size_bucket", backend="teacher",
                                    le="8.0")  # fmt: skip
            assert batches >= 3 and within == batches  # 30 rows, at most 8 per call
            assert gateway.teacher.calls < 30

            await gateway.service.set_student_share(0.0)  # now the student is the shadow
            gateway.student.calls = 0
            gateway.student.behaviour, gateway.student.delay = Behaviour.SLOW, 0.02
            await asyncio.gather(*(gateway.infer() for _ in range(10)))
            await gateway.service.shadow.drain()
            assert gateway.student.calls == 10  # one call each: its latency samples stay honest
            assert gateway.metric("gateway_shadow_batch_size_count", backend="student") == 0

    asyncio.run(scenario())


def test_a_full_queue_drops_comparisons_and_never_delays_clients(
    fresh_gateway: Callable[..., TestGateway], test_split: Split
) -> None:
    gateway = fresh_gateway(
        {
            "shadow": {"sample_rate": 1.0, "queue_size": 1, "workers": 1},
            "traffic": {"student_share": 1.0},  # live on the fast student, shadow on the teacher
            "overload": {"max_queue_ms": 60_000},  # the burst of 60 is queued, never shed
        }
    )
    batch = np.resize(test_split.x, (256, 64)).astype(np.float32)
    requests = 60

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
            calls = [
                client.post("/v2/models/digits/infer", json=_body(batch)) for _ in range(requests)
            ]
            return await asyncio.gather(*calls)

    responses = asyncio.run(burst())
    assert all(r.status_code == 200 for r in responses)

    def settled() -> bool:
        compared = gateway.metric("gateway_shadow_comparisons_total") / len(batch)
        return compared + gateway.metric("gateway_shadow_dropped_total") == requests

    wait_until(settled, 30, "every sampled request compared or dropped")
    assert gateway.metric("gateway_shadow_dropped_total") > 0


def test_kl_matches_a_value_worked_by_hand() -> None:
    # teacher p = (1/2, 1/2); student q = (1/4, 3/4):
    # KL(p || q) = 1/2 ln(2) + 1/2 ln(2/3) = 1/2 ln(4/3) = 0.1438410362...
    result = compare_logits(np.array([[0.0, 0.0]]), np.array([[0.0, np.log(3.0)]]))
    assert result.kl_per_example[0] == pytest.approx(0.1438410362258904, abs=1e-12)
    assert result.agreements == 0  # argmax of a tie is the first class; the student's is 1


def test_one_outlier_moves_the_kl_gate_by_its_weight_and_no_more() -> None:
    """Trust issue item 12: one comparison of 40 nats once landed in +Inf and made the max_kl
    interval (0, inf) for the rest of the step. Capped at 10 nats, it moves the mean of 1,000
    comparisons of 0.01 nats by at most 10/1000 and the interval stays finite and decides."""
    from prometheus_client import CollectorRegistry

    from controller import stats
    from gateway.metrics import GatewayMetrics

    outlier = compare_logits(np.array([[40.0, 0.0]]), np.array([[0.0, 40.0]]))
    assert outlier.kl_per_example[0] == 10.0
    registry = CollectorRegistry()
    histogram = GatewayMetrics(registry, "m", {}).shadow_kl.labels("m")
    for kl in [0.01] * 999 + outlier.kl_per_example.tolist():
        histogram.observe(kl)
    sample = {s.labels["le"]: s.value for metric in registry.collect()
              if metric.name == "gateway_shadow_kl_divergence" for s in metric.samples
              if s.name.endswith("_bucket")}  # fmt: skip
    buckets = sorted((float(le), count) for le, count in sample.items())
    total = registry.get_sample_value("gateway_shadow_kl_divergence_sum", {"model": "m"})
    assert total is not None
    mean, (low, high) = stats.mean_interval(total, 1000, buckets, 1.96)
    assert mean == pytest.approx(0.01 * 0.999 + 10 / 1000)
    assert 0.0 <= low < mean < high < 0.05  # finite, and under a max_kl of 0.05: it decides


def test_compare_logits_agreement_and_kl() -> None:
    teacher = np.array([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    student = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    result = compare_logits(teacher, student)
    assert result.examples == 2 and result.agreements == 1
    np.testing.assert_allclose(result.kl_per_example, _offline_kl(teacher, student))
    same = compare_logits(teacher, teacher)
    np.testing.assert_allclose(same.kl_per_example, 0.0, atol=1e-12)


def test_a_slow_shadow_backend_never_delays_clients(
    start_gateway: Callable[..., TestGateway], tmp_path: Path
) -> None:
    """The teacher (in the shadow) takes 300 ms a call on a real Triton; every live answer from
    the student still leaves the gateway well under 100 ms, by the gateway's own histogram."""
    triton = TritonProcess(tmp_path, slow_ms=300).start()
    try:
        gateway = start_gateway({
            "shadow": {"sample_rate": 1.0, "queue_size": 4},
            "traffic": {"student_share": 1.0},
            "teacher": {"kind": "triton", "url": triton.grpc_url, "model_name": "student_slow",
                        "protocol": "grpc", "timeout_ms": 1500},
        })  # fmt: skip
        with httpx.Client(base_url=gateway.url) as client:
            for _ in range(20):
                answer = client.post("/v2/models/digits/infer", json=_body(np.ones((1, 64))))
                assert answer.headers["x-served-by"] == "student"

        def settled() -> bool:
            compared = gateway.metric("gateway_shadow_comparisons_total")
            return compared + gateway.metric("gateway_shadow_dropped_total") == 20

        wait_until(settled, 30, "every shadow comparison done or dropped")
        fast = gateway.metric("gateway_request_duration_seconds_bucket", backend="student",
                              le="0.1")  # fmt: skip
        assert fast == 20  # no live request waited for its shadow
        # its shadow calls, alone or batched: each took the slow model's 300 ms at least
        calls = gateway.metric("gateway_backend_duration_seconds_count", backend="teacher",
                               path="shadow") + gateway.metric(
            "gateway_shadow_batch_duration_seconds_count", backend="teacher")  # fmt: skip
        seconds = gateway.metric("gateway_backend_duration_seconds_sum", backend="teacher",
                                 path="shadow") + gateway.metric(
            "gateway_shadow_batch_duration_seconds_sum", backend="teacher")  # fmt: skip
        assert calls >= 1 and seconds / calls >= 0.3  # the shadow really was slow
    finally:
        triton.stop()


# -- the shadow path's own limits, in process over scripted backends --------------------------


def test_a_hanging_shadow_backend_is_given_up_after_the_shadow_timeout() -> None:
    async def main() -> None:
        async with in_process_gateway(
            shadow={"sample_rate": 1.0, "timeout_ms": 50, "queue_size": 8}
        ) as gateway:
            gateway.student.behaviour = Behaviour.HANG  # the shadow of teacher-served requests
            for _ in range(3):
                answer = await gateway.infer()
                assert answer.headers["x-served-by"] == "teacher"
            await asyncio.wait_for(gateway.service.shadow.drain(), 2.0)  # not stuck behind it
            assert gateway.metric("gateway_shadow_errors_total", backend="student") == 3
            assert gateway.metric("gateway_shadow_comparisons_total") == 0

    asyncio.run(main())


def test_shadow_calls_skip_a_backend_whose_circuit_is_open() -> None:
    """Live traffic has a failing backend to itself: its probes decide when it closes."""

    async def main() -> None:
        async with in_process_gateway(
            shadow={"sample_rate": 1.0}, resilience={"failure_threshold": 1}
        ) as gateway:
            gateway.student.behaviour = Behaviour.FAIL
            await gateway.infer({"x-canary": "student"})  # opens the student's circuit
            gateway.student.behaviour = Behaviour.ANSWER
            calls = gateway.student.calls
            for _ in range(4):
                await gateway.infer()  # teacher-served, sampled for the student
            await gateway.service.shadow.drain()
            assert gateway.student.calls == calls
            assert (
                gateway.metric("gateway_shadow_dropped_total", reason="circuit_open") == 5
            )  # and the fallback's
            assert gateway.metric("gateway_shadow_dropped_total", reason="queue_full") == 0

    asyncio.run(main())


def test_a_label_that_beats_its_shadow_answer_waits_for_it_and_scores_both_backends() -> None:
    async def scenario() -> None:
        async with in_process_gateway(shadow={"sample_rate": 1.0, "max_delay_ms": 20},
                                      traffic={"student_share": 1.0}) as gateway:  # fmt: skip
            gateway.teacher.behaviour, gateway.teacher.delay = Behaviour.SLOW, 0.05
            answer = await gateway.infer()
            request_id = answer.headers["x-request-id"]
            label = await gateway.client.post("/v2/models/digits/feedback",
                                              json={"id": request_id, "label": 7},
                                              headers=ticket_of(answer))  # fmt: skip
            assert label.status_code == 200
            assert label.json()["paired"] is True  # the teacher's shadow answer was waited for
            both = gateway.metric("gateway_feedback_paired_total", outcome="both_correct",
                                  **{"class": "7"})  # fmt: skip
            assert both == 1

    asyncio.run(scenario())
