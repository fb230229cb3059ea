"""The fleet's key layout in Redis, in one place: the gateways write it, the controller reads it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StoreKeys:
    """Keys of one logical model's fleet, all under ``<key_prefix>:<model>:``."""

    key_prefix: str
    model: str

    @property
    def prefix(self) -> str:
        return f"{self.key_prefix}:{self.model}:"

    @property
    def share(self) -> str:
        """Hash {share, generation, student (a registry id)}."""
        return self.prefix + "share"

    @property
    def share_changed(self) -> str:
        """The channel a share change is published on."""
        return self.prefix + "share-changed"

    @property
    def replicas(self) -> str:
        """The set of registered replica ids (pruned of expired ones on read)."""
        return self.prefix + "replicas"

    def replica(self, replica_id: str) -> str:
        """One replica's registration (JSON, with a TTL)."""
        return self.prefix + "replica:" + replica_id

    # The predictions' keys are built from ``prefix`` inside the exchange script (redis_store):
    # ``p:<request id>``, and these two.

    @property
    def prediction_index(self) -> str:
        """Sorted set of waiting request ids by expiry."""
        return self.prefix + "p-index"

    @property
    def prediction_bytes(self) -> str:
        """What the waiting predictions are charged against feedback.max_bytes."""
        return self.prefix + "p-bytes"


def without_password(url: str) -> str:
    """A store URL fit for a log line or an error message."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}"
