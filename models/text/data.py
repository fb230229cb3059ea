"""The text pair's task: "marker order", a synthetic sequence classification whose rule needs
token order, so a bag of words cannot learn it and attention can.

Every sequence holds filler tokens and exactly one each of the markers A, B and C, at random
places. Its class is ``2 * [A before B] + [A before C]``: 0 A last, 1 C A B, 2 B A C, 3 A first.
Every sequence has the same multiset of markers, so token counts carry nothing about the class
(``bag_of_words_accuracy`` in the registry measures it: chance, 0.25). Classes are balanced by
drawing the class first and then an order of the markers that gives it.

Generated from a fixed seed (numpy's PCG64), so every build sees the same examples; nothing is
downloaded. No package on the reachable registries ships a labelled text dataset inside it that
this project could use offline (the usual ones, scikit-learn's 20 newsgroups, nltk's corpora,
torchtext's, fetch their data at run time), hence a documented synthetic task.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PAD, A, B, C = 0, 1, 2, 3
VOCAB_SIZE = 32  # 0 padding, 1-3 the markers, 4-31 filler
NUM_CLASSES = 4
MIN_LENGTH, MAX_LENGTH = 8, 40
SIZES = {"train": 6000, "validation": 1000, "test": 1000}
SEED = 20261204
INPUT_IDS, ATTENTION_MASK, OUTPUT_NAME = "input_ids", "attention_mask", "logits"

# The marker orders (positions of A, B, C ranked 0..2) that give each class.
_ORDERS = {
    label: [
        order
        for order in ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))
        if 2 * (order[0] < order[1]) + (order[0] < order[2]) == label
    ]
    for label in range(NUM_CLASSES)
}


def label_of(ids: np.ndarray) -> int:
    """The rule, from one unpadded sequence: what a model must learn."""
    where = {int(token): i for i, token in enumerate(ids) if token in (A, B, C)}
    return 2 * int(where[A] < where[B]) + int(where[A] < where[C])


@dataclass(frozen=True)
class TextSplit:
    """Token ids right-padded with 0 to the split's longest sequence ([N, L] INT64), the
    attention mask (1 real, 0 padding; same shape) and the labels ([N] INT64)."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    y: np.ndarray

    def inputs(self) -> dict[str, np.ndarray]:
        return {INPUT_IDS: self.input_ids, ATTENTION_MASK: self.attention_mask}


@dataclass(frozen=True)
class TextSplits:
    train: TextSplit
    validation: TextSplit
    test: TextSplit
    dataset_hash: str


def generate(count: int, rng: np.random.Generator) -> TextSplit:
    ids = np.zeros((count, MAX_LENGTH), dtype=np.int64)
    mask = np.zeros((count, MAX_LENGTH), dtype=np.int64)
    labels = rng.integers(0, NUM_CLASSES, count).astype(np.int64)
    for row, label in enumerate(labels):
        length = int(rng.integers(MIN_LENGTH, MAX_LENGTH + 1))
        ids[row, :length] = rng.integers(C + 1, VOCAB_SIZE, length)
        places = np.sort(rng.choice(length, 3, replace=False))
        orders = _ORDERS[int(label)]
        order = orders[int(rng.integers(len(orders)))]
        for marker, rank in zip((A, B, C), order, strict=True):
            ids[row, places[rank]] = marker
        mask[row, :length] = 1
    return TextSplit(ids, mask, labels)


def load_splits() -> TextSplits:
    rng = np.random.default_rng(SEED)
    train, validation, test = (generate(n, rng) for n in SIZES.values())
    digest = hashlib.sha256()
    for split in (train, validation, test):
        for array in (split.input_ids, split.attention_mask, split.y):
            digest.update(np.ascontiguousarray(array).tobytes())
    return TextSplits(train, validation, test, digest.hexdigest()[:16])


def save_test_split(split: TextSplit, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path, input_ids=split.input_ids, attention_mask=split.attention_mask, y=split.y
    )


def load_test_split(path: Path) -> TextSplit:
    with np.load(path) as data:
        return TextSplit(
            data["input_ids"].astype(np.int64),
            data["attention_mask"].astype(np.int64),
            data["y"].astype(np.int64),
        )
