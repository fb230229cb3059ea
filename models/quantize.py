"""INT8 with ONNX Runtime's quantizer: dynamic (weights INT8, activations quantized per call)
and static QDQ (activations' ranges calibrated once on the training split)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)

from models.evaluate import INPUT_NAME

CALIBRATION_BATCH = 64
QUANTIZATIONS = ("int8-dynamic", "int8-static")


class _Batches(CalibrationDataReader):  # type: ignore[misc]
    def __init__(self, x: np.ndarray) -> None:
        self._batches: Iterator[np.ndarray] = iter(
            x[start : start + CALIBRATION_BATCH] for start in range(0, len(x), CALIBRATION_BATCH)
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch}


def quantize(kind: str, source: Path, target: Path, calibration_x: np.ndarray) -> None:
    """Writes ``source`` quantized as ``kind`` (one of ``QUANTIZATIONS``) to ``target``."""
    # The quantizer logs (on the root logger) a line per model suggesting pre-processing; these
    # graphs are two or three Gemms, which it quantizes as they are.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        _quantize(kind, source, target, calibration_x)
    finally:
        root.setLevel(level)


def _quantize(kind: str, source: Path, target: Path, calibration_x: np.ndarray) -> None:
    if kind == "int8-dynamic":
        quantize_dynamic(source, target, weight_type=QuantType.QInt8)
    elif kind == "int8-static":
        quantize_static(
            source,
            target,
            _Batches(calibration_x),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
        )
    else:
        raise ValueError(f"unknown quantization {kind!r}; known: {', '.join(QUANTIZATIONS)}")
