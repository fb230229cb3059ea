"""What padded batching buys a transformer on a GPU: the text pair's teacher architecture
(``models.text.nets.teacher_net``: 4 layers, width 128) under PyTorch on CUDA, one request of
8-128 tokens at a time against the same requests padded into calls of up to 64 rows (to the
longest, or by length buckets), each call's answers brought back to the host as a server's are.

Run where a GPU is lent (``python3 -m tests.benchmarks.gpu_padding --out results.json``): the
gateway serves ONNX Runtime, whose GPU build is not on the lent machine's image, so this measures
the model's own batching economics there, not the gateway. Weights are the architecture's seeded
initial ones: the arithmetic, not the answers, is what is timed (padded answers are still checked
against the unpadded ones, so a mask that leaks padding is caught).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from models.text.nets import teacher_net

BUCKETS = (16, 32, 64, 128)
MAX_ROWS = 64


def requests(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(4, 32, size=int(length)) for length in rng.integers(8, 129, size=count)]


def padded(rows: list[np.ndarray], length: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    ids = np.zeros((len(rows), length), dtype=np.int64)
    mask = np.zeros((len(rows), length), dtype=np.int64)
    for index, row in enumerate(rows):
        ids[index, : len(row)], mask[index, : len(row)] = row, 1
    return torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)


def calls_unbatched(reqs: list[np.ndarray]) -> list[list[int]]:
    return [[index] for index in range(len(reqs))]


def calls_padded(reqs: list[np.ndarray]) -> list[list[int]]:
    return [list(range(start, min(start + MAX_ROWS, len(reqs))))
            for start in range(0, len(reqs), MAX_ROWS)]  # fmt: skip


def calls_bucketed(reqs: list[np.ndarray]) -> list[list[int]]:
    by_bucket: dict[int, list[int]] = {}
    for index, row in enumerate(reqs):
        by_bucket.setdefault(next(edge for edge in BUCKETS if len(row) <= edge), []).append(index)
    return [members[start:start + MAX_ROWS] for members in by_bucket.values()
            for start in range(0, len(members), MAX_ROWS)]  # fmt: skip


def run(model: torch.nn.Module, reqs: list[np.ndarray], plan: list[list[int]], device: str,
        bucketed: bool) -> tuple[float, dict[int, np.ndarray], float]:  # fmt: skip
    """Seconds for every call (inputs to the device, answers back), each request's logits, and
    the share of padded positions."""
    answers: dict[int, np.ndarray] = {}
    real = padded_total = 0
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    with torch.inference_mode():
        for members in plan:
            rows = [reqs[i] for i in members]
            longest = max(len(row) for row in rows)
            length = next(edge for edge in BUCKETS if longest <= edge) if bucketed else longest
            ids, mask = padded(rows, length, device)
            logits = model(ids, mask).cpu().numpy()  # the host waits, as a server's call does
            for position, index in enumerate(members):
                answers[index] = logits[position]
            real += sum(len(row) for row in rows)
            padded_total += length * len(rows)
    return time.perf_counter() - started, answers, 1 - real / padded_total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(1)  # as the gateway runs a model: one thread a call
    torch.manual_seed(0)
    model = teacher_net().eval().to(device)
    reqs = requests(args.requests)
    plans: dict[str, tuple[Callable[[list[np.ndarray]], list[list[int]]], bool]] = {
        "unbatched": (calls_unbatched, False),
        "padded to the longest": (calls_padded, False),
        "length buckets 16/32/64/128": (calls_bucketed, True),
    }
    for plan, bucketed in plans.values():  # warm-up: kernels chosen, memory pools grown
        run(model, reqs[:256], plan(reqs[:256]), device, bucketed)
    seconds: dict[str, list[float]] = {name: [] for name in plans}
    results: dict[str, dict[str, float]] = {}
    reference: dict[int, np.ndarray] = {}
    for _ in range(args.rounds):
        for name, (plan, bucketed) in plans.items():
            took, answers, waste = run(model, reqs, plan(reqs), device, bucketed)
            seconds[name].append(took)
            if name == "unbatched":
                reference = answers
            worst = max(float(np.max(np.abs(answers[i] - reference[i]))) for i in reference)
            results[name] = {"padding_waste": waste, "max_abs_difference": worst}
    for name in plans:
        took = statistics.median(seconds[name])
        results[name]["requests_per_s"] = args.requests / took
    base = results["unbatched"]["requests_per_s"]
    for name in plans:
        results[name]["vs_unbatched"] = results[name]["requests_per_s"] / base
        print(f"{name:30s} {results[name]['requests_per_s']:10.0f} req/s "
              f"{results[name]['vs_unbatched']:6.2f}x  waste {results[name]['padding_waste']:.0%}"
              f"  max |diff| {results[name]['max_abs_difference']:.2e}")  # fmt: skip
    args.out.write_text(json.dumps({
        "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor(),
        "torch": torch.__version__, "requests": args.requests, "rounds": args.rounds,
        "lengths": "uniform 8-128", "max_rows_per_call": MAX_ROWS, "rows": results,
    }, indent=2) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
