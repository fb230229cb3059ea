"""A cascade in a fleet, against a real Redis and real gateway processes: a label posted to
another replica than the one that answered still counts toward the cascade's accuracy, by the
lane its request took (the lane travels in the remembered prediction)."""

from __future__ import annotations

import httpx
import pytest

from gateway import metric_names as names
from models.data import Split
from tests.servers import LABELLER, RedisFleet, TestGateway

pytestmark = pytest.mark.e2e


@pytest.fixture
def replicas(redis_fleet: RedisFleet) -> list[TestGateway]:
    settings = {
        "traffic": {"student_share": 1.0, "mode": "cascade",
                    "cascade": {"min_confidence": 0.9}},
        "shadow": {"sample_rate": 0.0},
    }  # fmt: skip
    return [redis_fleet.start(settings) for _ in range(2)]


def test_labels_posted_to_the_other_replica_count_toward_the_cascade_by_lane(
    replicas: list[TestGateway], test_split: Split
) -> None:
    answering, labelling = replicas
    rows, labels = test_split.x[:200], test_split.y[:200]
    escalated = 0
    with httpx.Client(timeout=10) as client:
        for i in range(200):
            body = {"id": f"cascade-{i}", "inputs": [{"name": "pixels", "shape": [1, 64],
                    "datatype": "FP32", "data": rows[i].tolist()}]}  # fmt: skip
            answer = client.post(f"{answering.url}/v2/models/digits/infer", json=body)
            assert answer.status_code == 200, answer.text
            escalated += answer.headers.get("x-escalated") == "true"
        for i in range(200):
            scored = client.post(f"{labelling.url}/v2/models/digits/feedback", headers=LABELLER,
                                 json={"id": f"cascade-{i}", "label": int(labels[i])})  # fmt: skip
            assert scored.status_code == 200, scored.text
            assert scored.json()["backend"] in ("teacher", "student")  # the lane stays inside
    assert 0 < escalated < 200  # digits at top < 0.9: about 4 %
    # every label counted on the replica it reached, by the lane the other replica gave it
    assert answering.total(names.CASCADE_FEEDBACK) == 0
    assert labelling.metric(names.CASCADE_FEEDBACK, model="digits", escalated="true") == escalated
    assert labelling.metric(names.CASCADE_FEEDBACK, model="digits",
                            escalated="false") == 200 - escalated  # fmt: skip
    assert labelling.total(names.FEEDBACK, model="digits", backend="teacher") == escalated
    assert labelling.total(names.FEEDBACK, model="digits", backend="student") == 200 - escalated
