"""Chooses the backend for each request: forced by header, sticky by routing key, or at random.

A routing key is hashed into one of 10,000 buckets and goes to the student when its bucket is
below share * 10,000, so a key that reached the student at share s keeps reaching it at every
larger share: raising the share only ever adds users to the student.
"""

from __future__ import annotations

import hashlib
import random

from gateway.errors import BadRequest
from gateway.roles import ROLES, Role

BUCKETS = 10_000


def bucket_of(routing_key: str) -> int:
    digest = hashlib.blake2b(routing_key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


class TrafficSplit:
    """The student's share and its generation (incremented on every change)."""

    def __init__(self, student_share: float, rng: random.Random | None = None) -> None:
        self.student_share = student_share
        self.generation = 0
        self._rng = rng or random.Random()

    def set_share(self, student_share: float) -> int:
        self.student_share = student_share
        self.generation += 1
        return self.generation

    def apply(self, student_share: float, generation: int) -> None:
        """A fleet's share, at the fleet's generation (``gateway.state.fleet``)."""
        self.student_share = student_share
        self.generation = generation

    def choose(self, routing_key: str | None, forced: str | None) -> Role:
        if forced is not None:
            if forced not in ROLES:
                raise BadRequest(f"x-canary must be 'teacher' or 'student', got {forced!r}")
            return "student" if forced == "student" else "teacher"
        if routing_key is not None:
            threshold = round(self.student_share * BUCKETS)
            return "student" if bucket_of(routing_key) < threshold else "teacher"
        return "student" if self._rng.random() < self.student_share else "teacher"
