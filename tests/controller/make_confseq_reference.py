"""Writes ``tests/controller/data/confseq_normal_mixture.json``: the normal-mixture uniform
boundaries of ``confseq`` (Howard, Ramdas, McAuliffe & Sekhon 2021, the paper's reference
implementation), against which ``tests/controller/test_sequences.py`` checks
``controller.sequences``. confseq ships no wheels and its boundaries are C++ built against
Boost, so the suite reads the table rather than the library; to write it again:

    apt-get install libboost-dev cmake
    python3 -m venv /tmp/confseq && /tmp/confseq/bin/pip install scikit-build cmake pybind11 \\
        numpy scipy && /tmp/confseq/bin/pip install --no-build-isolation confseq==0.0.11
    /tmp/confseq/bin/python tests/controller/make_confseq_reference.py
"""

from __future__ import annotations

import json
import math
from importlib.metadata import version
from pathlib import Path

import confseq.boundaries as boundaries

OUT = Path(__file__).parent / "data" / "confseq_normal_mixture.json"
SAMPLES = (10, 60, 300, 1000, 2000, 10_000, 100_000, 1_000_000)
ALPHAS = (0.05, 0.025, 0.005, 0.001)
TUNED_AT = (60, 2000)  # min_requests: where the boundary is made tightest


def main() -> None:
    rows = []
    for n in SAMPLES:
        for alpha in ALPHAS:
            for n_star in TUNED_AT:
                # z = boundary / sqrt(n) (unit variance), tuned at n_star for this alpha
                one = float(boundaries.normal_mixture_bound(n, alpha, n_star, alpha, True))
                two = float(boundaries.normal_mixture_bound(n, alpha, n_star, alpha, False))
                rows.append({"n": n, "alpha": alpha, "n_star": n_star,
                             "one_sided_z": one / math.sqrt(n),
                             "two_sided_z": two / math.sqrt(n)})  # fmt: skip
    table = {"confseq": version("confseq"), "function": "confseq.boundaries.normal_mixture_bound",
             "rows": rows}  # fmt: skip
    OUT.write_text(json.dumps(table, indent=1) + "\n")


if __name__ == "__main__":
    main()
