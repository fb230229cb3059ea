"""The student one model serves: which one it is (its registry id), whether it is loaded, and
swapping it for another at run time (``PUT /admin/models/{model}/student``, or the fleet's word).

A student is changed only at share 0, so no user is answered by a model nobody judged; a new
one is read and checked against the teacher's signature before anything (the fleet's store
included) hears of it. A student on Triton may not be readable at start-up: it is then loaded in
the background, and until it is the model's requests go to the teacher.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from gateway.backends import Backend
from gateway.backends.onnx import LoadedModel, OnnxBackend
from gateway.errors import BackendUnavailable, Conflict, Unprocessable
from gateway.metrics import GatewayMetrics
from gateway.signature import Signature, signature_mismatches
from gateway.state.fleet import FleetMember
from gateway.student_files import resolve_off_the_loop

log = logging.getLogger(__name__)


class StudentSlot:
    def __init__(
        self,
        backend: Backend,
        teacher_signature: Signature,
        student_id: str | None,
        registry: Path,
        metrics: GatewayMetrics,
        share: Callable[[], float],
        fleet: Callable[[], FleetMember | None],
    ) -> None:
        self._backend = backend
        self._signature = teacher_signature
        self._registry = registry
        self._metrics = metrics
        self._share = share  # the student share this replica applies now
        self._fleet = fleet  # the model's fleet membership (state.url redis), else None
        self.id = student_id
        """The registry id (content hash) of the student's file; None for a student on Triton."""
        self.loaded = True  # False until a lazily loaded student is read and checked
        self._refused = False
        self._said_unloaded = False
        # one swap at a time: the id must name the session serving (two PUTs whose warm-ups
        # ended out of order left the id of one and the session of the other)
        self._swapping = asyncio.Lock()
        metrics.set_student(student_id)

    # -- a student on Triton, loaded when it can be read ---------------------------------------

    async def try_loading(self) -> bool:
        """One attempt to read the student and check it against the teacher's signature."""
        try:
            await self._backend.load()
        except BackendUnavailable as exc:
            if not self._said_unloaded:  # say it once, not per poll
                log.warning("%s; serving the teacher only until it appears", exc.message)
                self._said_unloaded = True
            self.loaded = False
            return False
        problems = signature_mismatches(self._signature, self._backend.signature)
        refused = bool(problems)
        if refused:
            await self._backend.close()
            if not self._refused:  # loudly, once per refusal rather than per poll
                log.error("student REFUSED: its signature differs from the teacher's: %s; "
                          "serving the teacher only", "; ".join(problems))  # fmt: skip
        self._refused = refused
        self._metrics.signature_mismatch.labels(self._metrics.model, "student").set(int(refused))
        self.loaded = not refused
        if refused:
            return False
        self._said_unloaded = False
        log.info("loaded %s", self._backend.description)
        return True

    async def load_when_it_appears(self, poll_seconds: float) -> None:
        while not await self.try_loading():
            await asyncio.sleep(poll_seconds)

    # -- swapping it -----------------------------------------------------------------------------

    async def swap(self, model_id: str) -> None:
        async with self._swapping:
            await self._swap(model_id)

    async def _swap(self, model_id: str) -> None:
        """Serve the registry's model ``model_id``: only at share 0 (this replica's, and the
        fleet's); in a fleet, through the store, for every replica to load. Checked here
        (registry, file, signature) before the store hears of it, so a bad id never reaches the
        other replicas."""
        fleet = self._fleet()
        fleet_share = fleet.fleet_share if fleet is not None else None
        fleet_student = fleet_share.student if fleet_share is not None else model_id
        if model_id == self.id and fleet_student == model_id:
            return  # already served (a controller resuming its rollout asks again): no change
        _refuse_unless_share_0(self._share(), fleet_share.share if fleet_share else None)
        loaded = await self._open(model_id)
        _refuse_unless_share_0(self._share(), None)  # again: it may have moved during the read
        if fleet is not None:
            await fleet.write_student(model_id)  # the store checks the fleet's share
        await self._adopt(model_id, loaded)

    async def follow_fleet(self, model_id: str) -> None:
        """A replica following its fleet: the store checked the fleet's share; this replica's
        own applied share must be 0 too, after the file is read."""
        async with self._swapping:
            loaded = await self._open(model_id)
            _refuse_unless_share_0(self._share(), None)
            await self._adopt(model_id, loaded)

    async def _open(self, model_id: str) -> LoadedModel:
        student = self._backend
        if not isinstance(student, OnnxBackend):
            raise Conflict(
                "the student is served by Triton (student.kind: triton), which loads its own "
                "files; a registry id is served with student.kind: onnx"
            )
        path = await resolve_off_the_loop(self._registry, model_id)
        try:
            loaded = await student.open(path)
        except BackendUnavailable as exc:
            raise Conflict(f"model '{model_id}': {exc.message}") from exc
        problems = signature_mismatches(self._signature, loaded.signature)
        if problems:
            raise Unprocessable(f"model '{model_id}' cannot be the student: its signature "
                                "differs from the teacher's: " + "; ".join(problems))  # fmt: skip
        return loaded

    async def _adopt(self, model_id: str, loaded: LoadedModel) -> None:
        previous = self.id
        student = self._backend
        assert isinstance(student, OnnxBackend)
        await student.adopt(loaded)
        self.id = model_id
        self.loaded, self._refused = True, False
        self._metrics.set_student(model_id)
        log.info("student %s -> %s (%s)", previous, model_id, loaded.config.path)


def _refuse_unless_share_0(share: float, fleet_share: float | None) -> None:
    serving = next((each for each in (share, fleet_share) if each), None)
    if serving is not None:
        raise Conflict(f"the student share is {serving:.4g}: a student is changed only at "
                       "share 0 (set it to 0 first, or let a rollback do it)")  # fmt: skip
