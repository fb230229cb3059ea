"""Reads a model's compute time from Triton's own metrics endpoint (Prometheus text), so the
gateway can re-export it per backend: Triton reports no CPU time per model, but it does report
the time its backend spent computing each model's requests."""

from __future__ import annotations

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

COMPUTE = "nv_inference_compute_infer_duration_us"


async def compute_seconds(
    session: aiohttp.ClientSession, url: str, model_name: str, timeout: float
) -> float | None:
    """Seconds Triton spent computing ``model_name`` (every version, every client), or None when
    the endpoint has no such series yet."""
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as response:
        response.raise_for_status()
        text = await response.text()
    return compute_seconds_in(text, model_name)


def compute_seconds_in(text: str, model_name: str) -> float | None:
    found = None
    for family in text_string_to_metric_families(text):
        if family.name != COMPUTE:  # the parser names its counter samples ..._total
            continue
        for sample in family.samples:
            if sample.labels.get("model") == model_name:
                found = (found or 0.0) + sample.value / 1e6
    return found
