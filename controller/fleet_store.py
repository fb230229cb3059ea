"""The fleet as the gateways' state store knows it (``distill-canary run --state-url``): the
replicas are read from the registry at every call, so a replica that joins is verified and one
whose heartbeat expired is dropped (with a log line), and the share is written once, to the
store, for every replica to apply.

The same interface as ``actuator.GatewayFleet``, keyed by replica id rather than URL (several
``--workers`` of one pod share a URL, each a replica of its own).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import redis
from pydantic import ValidationError
from redis.exceptions import RedisError

from controller.actuator import GatewaysDisagree, GatewaysUnreachable
from controller.sources.base import MetricsUnavailable
from gateway.protocol import TrafficState
from gateway.state.keys import StoreKeys, without_password
from gateway.state.registration import ReplicaRegistration
from gateway.state.scripts import SET_SHARE, SET_STUDENT
from gateway.validation import describe_errors

log = logging.getLogger(__name__)
CONFIRM_SECONDS = 3.0
"""How long ``set_share`` waits for every live replica to report the new generation."""


class StoreFleet:
    def __init__(
        self,
        url: str,
        model: str,
        key_prefix: str = "distill-gateway",
        password: str | None = None,
        timeout_seconds: float = 2.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        username: str | None = None,
    ) -> None:
        self.url = url
        self._client = _redis_client(url, password, username, timeout_seconds)
        self._keys = StoreKeys(key_prefix, model)
        self._set_share = self._client.register_script(SET_SHARE.source)
        self._set_student = self._client.register_script(SET_STUDENT.source)
        self._sleep = sleep
        self._clock = clock
        self._known: dict[str, str] = {}  # replica id -> URL, as last read
        self._newest_seen = 0  # the highest generation any replica has reported to us
        self.replicas: list[ReplicaRegistration] = []

    @property
    def replica_ids(self) -> list[str]:
        """The live replicas' ids, as last read (what ``ShareConfirmed`` counts)."""
        return [replica.id for replica in self.replicas]

    def scrape_targets(self) -> dict[str, str]:
        """The live replicas' URLs -> where each serves /metrics (its registration's
        ``metrics_url``: ``metrics.port`` may put it apart from the admin API), once each
        (workers of one pod share a URL, and its /metrics reports them all). A store that cannot
        be read makes the metrics unavailable (the analysis holds), like a gateway that cannot be
        scraped."""
        try:
            self._read_registry()
        except GatewaysUnreachable as exc:
            raise MetricsUnavailable(str(exc)) from exc
        return {
            replica.url: replica.scrape_url
            for replica in sorted(self.replicas, key=lambda r: r.url)
            if replica.url
        }

    def admin_urls(self) -> list[str]:
        return list(self.scrape_targets())

    def set_share(self, share: float) -> dict[str, TrafficState]:
        """Writes the share once, to the store, then waits (a few seconds at most) for every
        live replica to report its generation; raises naming those that did not."""
        # Above every generation a replica ever reported: a store that lost its data restarts
        # its count (and its registry), and replicas ignore a generation older than theirs.
        try:
            generation = int(self._set_share(keys=SET_SHARE.keys(self._keys),
                                             args=[repr(share), self._newest_seen]))  # fmt: skip
        except (RedisError, OSError) as exc:
            raise self._unreachable(exc) from exc
        wanted = TrafficState(student_share=share, generation=generation)
        deadline = self._clock() + CONFIRM_SECONDS
        while True:
            lagging = self._lagging(share, generation)
            if not lagging or self._clock() > deadline:
                break
            self._sleep(0.1)
        if lagging:
            raise GatewaysDisagree("; ".join(lagging))
        return {replica_id: wanted for replica_id in self.replica_ids}

    def set_student(self, model_id: str) -> None:
        """Writes the student once, to the store (refused unless the fleet's share is 0), then
        waits for every live replica to report it loaded; raises naming those that did not, with
        the reason a replica gave."""
        try:
            answer = self._set_student(keys=SET_STUDENT.keys(self._keys), args=[model_id])
        except (RedisError, OSError) as exc:
            raise self._unreachable(exc) from exc
        if answer[0] != b"ok":
            raise GatewaysDisagree(f"the fleet's share is {float(answer[1]):.4g}: a student is "
                                   "changed only at share 0")  # fmt: skip
        deadline = self._clock() + CONFIRM_SECONDS
        while True:
            self._read_registry()
            behind = [r for r in self.replicas if not r.draining and r.student_id != model_id]
            if not behind or self._clock() > deadline:
                break
            self._sleep(0.1)
        if behind:
            raise GatewaysDisagree("; ".join(
                f"{r.id} ({r.url or 'no URL'}) serves student {r.student_id}"
                + (f": {r.student_error}" if r.student_error else "")
                for r in behind))  # fmt: skip

    def verify(self, share: float, after: dict[str, TrafficState] | None = None) -> None:
        newest = max((t.generation for t in (after or {}).values()), default=0)
        lagging = self._lagging(share, newest)
        if lagging:
            raise GatewaysDisagree("; ".join(lagging))

    def read(self) -> dict[str, TrafficState]:
        self._read_registry()
        return {replica.id: TrafficState(student_share=replica.student_share,
                                         generation=replica.generation)
                for replica in self.replicas}  # fmt: skip

    def read_reachable(self) -> dict[str, TrafficState]:
        return self.read()

    def _lagging(self, share: float, generation: int) -> list[str]:
        self._read_registry()
        if not self.replicas:
            return [f"no live replica in the state store {without_password(self.url)}"]
        serving = [r for r in self.replicas if not r.draining]  # draining: leaving anyway
        return [f"{r.id} ({r.url or 'no URL'}) reports share {r.student_share:.4g} "
                f"generation {r.generation}, expected {share:.4g} generation >= {generation}"
                for r in serving if _differs(r, share, generation)]  # fmt: skip

    def _read_registry(self) -> None:
        try:
            ids = sorted(i.decode() for i in self._client.smembers(self._keys.replicas))  # type: ignore[union-attr]
            raw = self._client.mget([self._keys.replica(i) for i in ids]) if ids else []
        except (RedisError, OSError) as exc:
            raise self._unreachable(exc) from exc
        self.replicas = [
            self._registration(i, record)
            for i, record in zip(ids, raw, strict=True)
            if record is not None
        ]
        self._newest_seen = max([self._newest_seen, *(r.generation for r in self.replicas)])
        current = {replica.id: replica.url for replica in self.replicas}
        for gone in self._known.keys() - current.keys():
            log.warning("replica %s (%s) left the fleet: its heartbeat expired; dropped",
                        gone, self._known[gone] or "no URL")  # fmt: skip
        for joined in current.keys() - self._known.keys():
            if self._known or len(current) == 1:
                log.info("replica %s (%s) joined the fleet", joined, current[joined] or "no URL")
        self._known = current

    def _registration(self, replica_id: str, record: bytes | str) -> ReplicaRegistration:
        """A live replica whose registration cannot be read is one that cannot be confirmed: the
        rollout holds (as for a replica that does not answer) rather than act without it."""
        try:
            return ReplicaRegistration.model_validate_json(record)
        except ValidationError as exc:
            raise GatewaysUnreachable(
                f"replica {replica_id}'s registration in the state store "
                f"{without_password(self.url)} is not one this controller reads: "
                f"{describe_errors(exc)}"
            ) from exc

    def _unreachable(self, exc: Exception) -> GatewaysUnreachable:
        return GatewaysUnreachable(
            f"state store {without_password(self.url)} unreachable: {type(exc).__name__}: {exc}"
        )

    def close(self) -> None:
        self._client.close()


def _differs(replica: ReplicaRegistration, share: float, generation: int) -> bool:
    return abs(replica.student_share - share) > 1e-9 or replica.generation < generation


def _redis_client(
    url: str, password: str | None, username: str | None, timeout_seconds: float
) -> redis.Redis:
    return redis.Redis.from_url(url, username=username, password=password,
                                socket_timeout=timeout_seconds,
                                socket_connect_timeout=timeout_seconds)  # fmt: skip


def _glob_escaped(text: str) -> str:
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


def fleet_models(
    url: str, key_prefix: str, password: str | None = None, username: str | None = None
) -> list[str]:
    """The models some live replica of the store's fleet registered under, by name (what
    ``run`` chooses from when neither ``--model`` nor the policy names one)."""
    client = _redis_client(url, password, username, 2.0)
    wildcard = StoreKeys(_glob_escaped(key_prefix), "*").replicas
    head = len(StoreKeys(key_prefix, "").prefix) - 1  # "<prefix>:" before the model's name
    tail = len(StoreKeys(key_prefix, "").replicas) - head  # ":replicas" after it
    models = []
    try:
        for key in client.scan_iter(match=wildcard, count=500):
            model = key.decode()[head:-tail]
            if ":" in model:  # another fleet's, under a longer prefix (names have no ':')
                continue
            keys = StoreKeys(key_prefix, model)
            ids = [i.decode() for i in client.smembers(keys.replicas)]  # type: ignore[union-attr]
            if ids and any(client.mget([keys.replica(i) for i in ids])):
                models.append(model)
    except (RedisError, OSError) as exc:
        raise GatewaysUnreachable(f"state store {without_password(url)} unreachable: "
                                  f"{type(exc).__name__}: {exc}") from exc  # fmt: skip
    finally:
        client.close()
    return sorted(set(models))
