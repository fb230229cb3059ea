"""A registered model's profile of its training split, in the gateway's drift bins: what the
post-promotion watch compares production with when ``watch.reference: registry``.

The split goes through the gateway's own summaries (``gateway.drift.DriftSummary``, default
``drift:`` settings, every row) and the model's ONNX file, so the profile's bins and feature keys
are the ones a gateway serving the model counts; the counts are read as the controller reads a
scrape (``controller.drift.DriftCounts``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest

from controller.drift import DriftCounts
from controller.promtext import parse
from gateway.backends.onnx import signature_of
from gateway.drift import DriftCollector, DriftSummary, OutputKind
from gateway.drift_config import DriftConfig
from gateway.errors import BackendUnavailable
from gateway.student_files import resolve

PROFILED = "profiled"
"""The model label the profile's summaries carry (never a served model's)."""


def training_profile(registry: Path, model_id: str, batch: int = 256) -> dict[str, Any]:
    """The profile (``models.registry.PROFILE_KEY``'s shape) of the model ``model_id`` on its
    pair's training split: the digits (input ``pixels``) or the text pair's (``input_ids``,
    ``attention_mask``; each row sent unpadded, as a batch-1 request is, so padding is not
    counted as token id 0)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(resolve(registry, model_id)),
                                   providers=["CPUExecutionProvider"])  # fmt: skip
    try:
        signature = signature_of(session)  # as the gateway serving the model reads it
    except BackendUnavailable as exc:
        raise ValueError(f"{model_id} is not profiled: {exc}") from None
    inputs = [spec.name for spec in signature.inputs]
    output = signature.outputs[0].name
    config = DriftConfig(sample_rate=1.0)
    summary = DriftSummary(PROFILED, signature, OutputKind(output, True), config, {})
    if inputs == ["pixels"]:
        from models.data import load_splits

        train = load_splits().train
        rows = [{"pixels": train.x[i : i + batch]} for i in range(0, len(train.x), batch)]
        labels = train.y
    elif inputs == ["input_ids", "attention_mask"]:
        from models.text.data import load_splits as load_text_splits

        text = load_text_splits().train
        lengths = text.attention_mask.sum(axis=1)
        rows = [{"input_ids": text.input_ids[i : i + 1, :n],
                 "attention_mask": text.attention_mask[i : i + 1, :n]}
                for i, n in enumerate(lengths.tolist())]  # fmt: skip
        labels = text.y
    else:
        raise ValueError(f"{model_id} is neither a digits nor a text-pair model (inputs: "
                         f"{', '.join(inputs)})")  # fmt: skip
    correct, seen = 0, 0
    for request in rows:
        (scores,) = session.run([output], request)
        answer = np.asarray(scores)
        correct += int((answer.argmax(axis=1) == labels[seen : seen + len(answer)]).sum())
        seen += len(answer)
        summary.observe(request, {output: answer}, student=True)
    metrics = CollectorRegistry()
    metrics.register(DriftCollector(summary))
    counts = DriftCounts.of(parse(generate_latest(metrics).decode()), PROFILED)
    drift_config = config.model_dump(exclude={"sample_rate"})
    return {"counts": counts.to_json(), "accuracy": correct / seen, "at": time.time(),
            "split": "train", "drift_config": drift_config}  # fmt: skip
