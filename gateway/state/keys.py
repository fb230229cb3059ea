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
        """One replica's registration (``ReplicaRegistration``'s JSON), with a TTL."""
        return self.prefix + "replica:" + replica_id

    def prediction(self, request_id: str) -> str:
        """One prediction awaiting its label: hash {b: backend, c: classes (int32 bytes), s:
        shape, o: the other backend's classes, l: the labels it was given}, with the TTL."""
        return self.prefix + "p:" + request_id

    # The three below index the predictions by their keys (``prediction``), not their request
    # ids: the exchange script evicts the oldest by the key it finds there, never building one.
    # Earlier versions kept ids under p-index, p-size and p-bytes; these are other keys so that
    # neither version's script reads the other's members during a rolling upgrade.

    @property
    def prediction_index(self) -> str:
        """Sorted set of the waiting predictions' keys by expiry (Redis's clock, in ms)."""
        return self.prefix + "predictions-by-expiry"

    @property
    def prediction_sizes(self) -> str:
        """Hash: a waiting prediction's key -> what it is charged against feedback.max_bytes."""
        return self.prefix + "prediction-sizes"

    @property
    def prediction_bytes(self) -> str:
        """What the waiting predictions are charged in all (the sum of ``prediction_sizes``)."""
        return self.prefix + "prediction-bytes"


def without_password(url: str) -> str:
    """A store URL fit for a log line or an error message."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}"
