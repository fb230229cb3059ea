"""Traffic actuation: set the student's share on every gateway, then verify that every gateway
reports it, before a step's clock starts. Any gateway that does not answer holds the rollout."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import httpx

from controller.gateway_paths import student_path, traffic_path
from gateway.protocol import TrafficState


class FleetNotConfirmed(Exception):
    """Some gateways did not take or confirm the share; the message names them and why."""


class GatewaysUnreachable(FleetNotConfirmed):
    """Some gateways did not answer, or answered with an error."""


class GatewaysDisagree(FleetNotConfirmed):
    """Every gateway answered, but some report another share (or an older generation)."""


class Fleet(Protocol):
    """What the controller acts on: a fixed list of gateways (``GatewayFleet``), or the replicas
    a state store's registry lists (``controller.fleet_store.StoreFleet``)."""

    @property
    def replica_ids(self) -> list[str]:
        """The gateways it acts on, by id: their URLs, or the ids in the store's registry (what
        ``ShareConfirmed`` counts)."""

    def set_share(self, share: float) -> dict[str, TrafficState]: ...

    def verify(self, share: float, after: dict[str, TrafficState] | None = None) -> None: ...

    def read(self) -> dict[str, TrafficState]: ...

    def read_reachable(self) -> dict[str, TrafficState]: ...

    def set_student(self, model_id: str) -> None:
        """Every gateway serves the registry's model ``model_id`` as its student, confirmed by
        each one; raises ``FleetNotConfirmed`` naming those that did not."""

    def scrape_targets(self) -> dict[str, str]:
        """Each gateway (as the metrics marks name it) -> where its ``/metrics`` is: what it
        advertises, since ``metrics.port`` may put it apart from the admin API."""

    def admin_urls(self) -> list[str]:
        """Each gateway's admin base URL (the keys of ``scrape_targets``), without asking the
        gateways where their metrics are."""


class GatewayFleet:
    """One model's share and student on a fixed list of gateways (each may serve others too,
    which this never touches)."""

    @property
    def replica_ids(self) -> list[str]:
        return self.urls

    def __init__(
        self, urls: Sequence[str], admin_token: str | None, client: httpx.Client, model: str
    ) -> None:
        self.urls = list(urls)
        self.model = model
        self._token = admin_token
        self._client = client
        self._metrics_urls: dict[str, str] = {}  # as each gateway last advertised it

    def set_share(self, share: float) -> dict[str, TrafficState]:
        """PUT the share on every gateway at once; raises if any gateway did not take it."""
        return self._on_all(lambda url: self._put(url, share))

    def read(self) -> dict[str, TrafficState]:
        return self._on_all(self._get)

    def read_reachable(self) -> dict[str, TrafficState]:
        """What every gateway that answers reports; the others are left out."""
        with ThreadPoolExecutor(max_workers=max(1, len(self.urls))) as pool:
            outcomes = list(pool.map(lambda url: self._attempt(self._get, url), self.urls))
        return {url: traffic for url, (traffic, _) in zip(self.urls, outcomes, strict=True)
                if traffic is not None}  # fmt: skip

    def verify(self, share: float, after: dict[str, TrafficState] | None = None) -> None:
        """Every gateway reports ``share`` (and, when ``after`` is given, a generation at least
        as new as the one our PUT produced); raises naming each gateway that does not."""
        problems = []
        for url, traffic in self.read().items():
            if abs(traffic.student_share - share) > 1e-9:
                problems.append(f"{url} reports share {traffic.student_share}, expected {share}")
            elif after is not None and traffic.generation < after[url].generation:
                problems.append(f"{url} reports an older generation {traffic.generation}")
        if problems:
            raise GatewaysDisagree("; ".join(problems))

    def set_student(self, model_id: str) -> None:
        self._on_all(lambda url: self._put_student(url, model_id))
        problems = [
            f"{url} reports student {traffic.student_id}, expected {model_id}"
            for url, traffic in self.read().items()
            if traffic.student_id != model_id
        ]
        if problems:
            raise GatewaysDisagree("; ".join(problems))

    def scrape_targets(self) -> dict[str, str]:
        """``GET`` of the model's traffic says where a gateway's ``/metrics`` is when it has a
        port of its own (``metrics_url``); else it is beside the admin API. A gateway that does not
        answer keeps what it said last (its scrape then fails or not on its own)."""
        for url, traffic in self.read_reachable().items():
            self._metrics_urls[url] = traffic.metrics_url or f"{url}/metrics"
        return {url: self._metrics_urls.get(url, f"{url}/metrics") for url in self.urls}

    def admin_urls(self) -> list[str]:
        return self.urls

    def _on_all(self, call: Callable[[str], TrafficState]) -> dict[str, TrafficState]:
        with ThreadPoolExecutor(max_workers=max(1, len(self.urls))) as pool:
            outcomes = list(pool.map(lambda url: self._attempt(call, url), self.urls))
        failures = [f"{url}: {error}" for url, (_, error) in zip(self.urls, outcomes, strict=True)
                    if error]  # fmt: skip
        if failures:
            raise GatewaysUnreachable("; ".join(failures))
        return {url: traffic for url, (traffic, _) in zip(self.urls, outcomes, strict=True)
                if traffic is not None}  # fmt: skip

    @staticmethod
    def _attempt(
        call: Callable[[str], TrafficState], url: str
    ) -> tuple[TrafficState | None, str | None]:
        try:
            return call(url), None
        except httpx.HTTPStatusError as exc:
            return None, f"HTTP {exc.response.status_code} {exc.response.text.strip()[:200]}"
        except httpx.HTTPError as exc:
            return None, f"unreachable ({exc.__class__.__name__}: {exc})"

    def _put(self, url: str, share: float) -> TrafficState:
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        response = self._client.put(
            f"{url}{traffic_path(self.model)}", json={"student_share": share}, headers=headers
        )
        response.raise_for_status()
        return TrafficState.model_validate_json(response.content)

    def _put_student(self, url: str, model_id: str) -> TrafficState:
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        response = self._client.put(
            f"{url}{student_path(self.model)}",
            json={"model_id": model_id},
            headers=headers,
            timeout=30.0,
        )
        response.raise_for_status()
        return TrafficState.model_validate_json(response.content)

    def _get(self, url: str) -> TrafficState:
        response = self._client.get(f"{url}{traffic_path(self.model)}")
        response.raise_for_status()
        return TrafficState.model_validate_json(response.content)
