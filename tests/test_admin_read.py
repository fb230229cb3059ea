"""GET /admin/traffic answers without the admin token (it changes nothing; operators, probes and
`distill-canary status` read it): these tests pin what it may show, so a field added to it is a
decision the README's admin section records, never an accident. Writes need the token."""

from __future__ import annotations

import asyncio

from gateway.protocol import FleetTraffic, TrafficState
from tests.fake_backend import in_process_gateway

OPEN_FIELDS = {
    "model", "student_share", "generation", "student_id",  # what this replica serves
    "fleet", "replica_id", "replicas", "student_error",  # in a fleet: the store and this replica
    "metrics_url",  # where its /metrics is, when it has a port of its own
    "mode", "cascade",  # in cascade mode: its threshold and the evidence behind it
}  # fmt: skip
"""Everything the README says an unauthenticated reader may learn."""


def test_the_open_read_can_show_only_what_the_readme_lists() -> None:
    assert set(TrafficState.model_fields) == OPEN_FIELDS
    assert set(FleetTraffic.model_fields) == {"student_share", "generation", "student_id"}


def test_reading_needs_no_token_and_writing_does() -> None:
    async def main() -> None:
        async with in_process_gateway() as gateway:
            read = await gateway.client.get("/admin/traffic")
            assert read.status_code == 200 and set(read.json()) <= OPEN_FIELDS
            for path, body in (("/admin/traffic", {"student_share": 1.0}),
                               ("/admin/student", {"model_id": "f6dd4edc5b382a10"})):  # fmt: skip
                assert (await gateway.client.put(path, json=body)).status_code == 401
            assert gateway.service.split.student_share == 0.0

    asyncio.run(main())
