"""``models/registry.json``: what was built, from what, and how good and fast it is.

Its sections: ``dataset``; ``models`` (the shipped teacher, student and bad student, by role);
``pairs`` (the other shipped pairs, each with its own ``dataset`` and ``models``);
``candidates`` (every file the sweep made, by content-hash id); ``sweep`` (how that sweep ran);
``history`` (what rollouts did with a candidate). Only the standard library: the gateway and the
controller read it without torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Entry = dict[str, Any]
ACCEPTED = "accepted"
REJECTED_CONVERSION = "rejected: conversion"
LATENCY_TIE = 0.05
"""Batch-1 latencies this close (5 %) are one speed: the median of 300 calls moves about that
much between runs on these machines."""


def content_hash(path: Path) -> str:
    """A file's id: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def load(path: Path) -> dict[str, Any]:
    registry: dict[str, Any] = json.loads(path.read_text())
    return registry


def save(path: Path, registry: dict[str, Any]) -> None:
    """Atomically: a reader never sees half a registry."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(registry, indent=2) + "\n")
    tmp.replace(path)


def entries(registry: dict[str, Any]) -> Iterator[Entry]:
    """Every registered model: the shipped ones, then the candidates."""
    yield from registry.get("models", {}).values()
    yield from registry.get("candidates", {}).values()


def pair_entries(registry: dict[str, Any]) -> Iterator[Entry]:
    """The models of the other shipped pairs (``pairs.<name>.models``: the text pair's), each
    scored on its own pair's test split; ``entries`` is the digits pair's and its sweep's."""
    for pair in registry.get("pairs", {}).values():
        yield from pair.get("models", {}).values()


def find(registry: dict[str, Any], model_id: str) -> Entry | None:
    every = (*entries(registry), *pair_entries(registry))
    return next((entry for entry in every if entry["id"] == model_id), None)


class UnreadableRegistry(LookupError):
    pass


class UnknownModel(LookupError):
    pass


def lookup(registry_path: Path, model_id: str) -> Entry:
    """The entry of ``model_id`` in the registry file; raises ``UnreadableRegistry`` or
    ``UnknownModel`` with a message fit for an operator."""
    try:
        registry = load(registry_path)
    except (OSError, ValueError) as exc:
        raise UnreadableRegistry(f"cannot read the model registry {registry_path}: {exc}") from exc
    entry = find(registry, model_id)
    if entry is None:
        raise UnknownModel(f"no model with id '{model_id}' in the registry {registry_path}; "
                           "`distill-models select` prints one")  # fmt: skip
    return entry


def teacher(registry: dict[str, Any]) -> Entry:
    """The teacher's entry; its latency the one measured in the sweep's run where there was one
    (the candidates' were measured in that run, so those compare)."""
    entry: Entry = registry["models"]["teacher"]
    same_run = registry.get("sweep", {}).get("teacher_latency_ms")
    return {**entry, "latency_ms": same_run} if same_run else entry


def candidates(registry: dict[str, Any]) -> list[Entry]:
    return list(registry.get("candidates", {}).values())


def record(path: Path, model_id: str, event: str, **details: Any) -> None:
    """Appends to the registry's history (``rolled_back``, ``promoted``, ...) what a rollout did
    with a model, so the next person choosing a student sees it."""
    registry = load(path)
    registry.setdefault("history", []).append(
        {"model_id": model_id, "event": event, "at": time.time(), **details}
    )
    save(path, registry)


# -- choosing ---------------------------------------------------------------------------------


def dominated(points: list[Entry]) -> set[str]:
    """Ids of the entries another one beats: at least as accurate and as fast at batch 1, and
    better in one of the two. The rest are the accuracy-latency Pareto frontier."""
    beaten = set()
    for a in points:
        for b in points:
            if b is a:
                continue
            acc_a, acc_b = a["test_accuracy"], b["test_accuracy"]
            lat_a, lat_b = _latency(a), _latency(b)
            if acc_b >= acc_a and lat_b <= lat_a and (acc_b > acc_a or lat_b < lat_a):
                beaten.add(a["id"])
                break
    return beaten


@dataclass(frozen=True)
class Selection:
    chosen: Entry
    runner_up: Entry | None
    why_runner_up_lost: str
    eligible: int


def select(registry: dict[str, Any], max_accuracy_drop: float, by: str) -> Selection | None:
    """The fastest (``by="latency"``, batch 1) or smallest (``by="size"``, file bytes) accepted
    candidate whose test accuracy is within ``max_accuracy_drop`` of the teacher's. Latencies
    within ``LATENCY_TIE`` of the fastest count as equally fast, and the most accurate of those
    wins: closer than that is the machine's noise, not the model's speed."""
    floor = teacher(registry)["test_accuracy"] - max_accuracy_drop
    eligible = [
        entry
        for entry in candidates(registry)
        if entry["status"] == ACCEPTED and entry["test_accuracy"] >= floor - 1e-12
    ]
    if not eligible:
        return None

    def cost(entry: Entry) -> float:
        return _latency(entry) if by == "latency" else float(entry["file_bytes"])

    cheapest = min(cost(entry) for entry in eligible)
    tie = cheapest * (1 + (LATENCY_TIE if by == "latency" else 0.0))

    def rank(entry: Entry) -> tuple[bool, float, float, str]:
        tied = cost(entry) <= tie
        return (not tied, -entry["test_accuracy"] if tied else cost(entry), cost(entry),
                entry["id"])  # fmt: skip

    ranked = sorted(eligible, key=rank)
    chosen = ranked[0]
    runner_up = ranked[1] if len(ranked) > 1 else None
    why = ""
    if runner_up is not None:
        a, b = cost(chosen), cost(runner_up)
        if b <= tie and runner_up["test_accuracy"] == chosen["test_accuracy"]:
            why = "as fast and as accurate: the tie goes to the lower id"
        elif b <= tie:
            quality = "fast" if by == "latency" else "small"
            why = (
                f"as {quality} but less accurate "
                f"({runner_up['test_accuracy']:.4f} against {chosen['test_accuracy']:.4f})"
            )
        elif by == "latency":
            why = f"{b * 1000:.2f} us at batch 1 against {a * 1000:.2f} us ({b / a:.2f}x slower)"
        else:
            why = f"{b:,.0f} bytes against {a:,.0f} ({b / a:.2f}x larger)"
    return Selection(chosen, runner_up, why, len(eligible))


def _latency(entry: Entry) -> float:
    return float(entry["latency_ms"]["batch_1"])


# -- drift profile ----------------------------------------------------------------------------

PROFILE_KEY = "drift_profile"
"""An entry's profile of its training split, for the post-promotion watch's reference
(``watch.reference: registry``): the watch's reference JSON (``controller.watch.Reference``:
``counts`` in the gateway's drift bins, ``accuracy`` on that split, ``at``) plus ``split`` and
``drift_config`` (the ``drift:`` settings whose bins it uses: a gateway binning otherwise cannot
be compared with it)."""


def set_profile(path: Path, model_id: str, profile: dict[str, Any]) -> None:
    """Stores ``profile`` in the entry of ``model_id`` (``UnknownModel`` when there is none)."""
    registry = load(path)
    entry = find(registry, model_id)
    if entry is None:
        raise UnknownModel(f"no model with id '{model_id}' in the registry {path}")
    entry[PROFILE_KEY] = profile
    save(path, registry)


def profile(entry: Entry) -> dict[str, Any] | None:
    stored: dict[str, Any] | None = entry.get(PROFILE_KEY)
    return stored
