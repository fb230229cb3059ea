"""A replica's registration in the fleet's store (``StoreKeys.replica``): written by each gateway
at every heartbeat (``gateway.state.fleet``), read by the gateways (to count the fleet) and by the
controller (``controller.fleet_store``, to confirm a share or a student and to find what to
scrape). This model is the JSON both sides agree on."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ReplicaRegistration(BaseModel):
    # A newer replica may register more than this version knows (during a rolling upgrade the
    # controller and the older replicas read it): what they do not know they ignore, rather than
    # refuse the replica and hold the rollout on a record that says all they need.
    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str
    """The replica's id (``state.replica_id``, by default ``<host>-<pid>``)."""
    student_share: float
    """The share this replica applies."""
    generation: int
    """The generation of that share (every change increments it)."""
    url: str = ""
    """Where its admin API is (``state.advertise_url``); empty when it did not say."""
    metrics_url: str = ""
    """Where its ``/metrics`` is; empty: beside the admin API (``<url>/metrics``)."""
    draining: bool = False
    """Shutting down: the controller no longer waits for it."""
    student_id: str | None = None
    """The registry id of the student it serves (None for a student on Triton)."""
    student_error: str | None = None
    """Why the fleet's student could not be loaded here."""
    pid: int | None = None
    started_at: float | None = None
    """Unix time the replica joined."""
    heartbeat_at: float | None = None
    """Unix time of this registration (it expires after ``state.replica_ttl_seconds``)."""

    @property
    def scrape_url(self) -> str:
        """Where the controller reads this replica's metrics."""
        return self.metrics_url or f"{self.url}/metrics"
