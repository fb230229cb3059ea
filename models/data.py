"""The digits dataset, split once with a fixed seed so every build sees the same examples."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SPLIT_SEED = 20261128


@dataclass(frozen=True)
class Split:
    """Raw pixels (0..16, float32, [N, 64]) and integer labels."""

    x: np.ndarray
    y: np.ndarray


@dataclass(frozen=True)
class DigitsSplits:
    train: Split
    validation: Split
    test: Split
    dataset_hash: str


def load_splits() -> DigitsSplits:
    """60/20/20 stratified split of scikit-learn's bundled digits (nothing is downloaded)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = digits.data.astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_rest, y_train, y_rest = train_test_split(
        x, y, test_size=0.4, random_state=SPLIT_SEED, stratify=y
    )
    x_val, x_test, y_val, y_test = train_test_split(
        x_rest, y_rest, test_size=0.5, random_state=SPLIT_SEED, stratify=y_rest
    )
    return DigitsSplits(
        train=Split(x_train, y_train),
        validation=Split(x_val, y_val),
        test=Split(x_test, y_test),
        dataset_hash=_hash_arrays(x, y),
    )


def save_test_split(split: Split, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, x=split.x, y=split.y)


def load_test_split(path: Path) -> Split:
    with np.load(path) as data:
        return Split(x=data["x"].astype(np.float32), y=data["y"].astype(np.int64))


def _hash_arrays(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]
