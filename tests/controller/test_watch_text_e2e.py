"""`distill-canary watch` end to end on the shipped transformer pair: a real gateway on
models/text/gateway.yaml (its teacher, student and signature) with the student at 100 %, the text
test split's rows (each at its own length) paced at 20 requests a second, the real CLI in a
subprocess recording its reference from the first seconds of traffic. Unshifted rows are judged
look after look without an alarm; rows 64-128 tokens long (the split's are 8-40) are rolled back;
a shifted token-id mix is alerted on, the student keeping its share.

No id inside the vocabulary is unseen: the training and test rows use every id of 1-31 (the three
markers once a row, filler uniform over 4-31; models/text/data.py), and gateway.yaml answers an id
past 31 with a 400, not a prediction. The token shift is therefore a mix the split rarely sends:
every filler token moved into ids 4-7 (an eighth of the split's tokens, all of the shifted rows'
filler), lengths and markers, so classes, unchanged."""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from controller.local.demo import pair
from controller.local.traffic import request_rows
from models.text import TEXT_TEST_SPLIT_PATH
from models.text.data import VOCAB_SIZE, C
from tests.rollouts import canary_env
from tests.servers import BIN, TestGateway, wait_until

pytestmark = pytest.mark.e2e

RATE = 20.0  # requests a second, every one summarised (drift.sample_rate 1.0)
LOOK_SECONDS = 1.0  # the watch's interval_seconds
REFERENCE_SECONDS = 10.0  # about 200 rows at RATE
RECENT_SECONDS = 10.0  # the recent part: 10 looks, as the default 300 s is at 30 s a look
CLEAN_LOOKS = 6  # judged looks of unshifted traffic before the shift (test_watch.py: an hour)
Row = dict[str, np.ndarray]
Shift = Callable[[Row, np.random.Generator], Row]


def longer(row: Row, rng: np.random.Generator) -> Row:
    """The row's markers in their order (so its class) among 64-128 filler tokens of the
    split's mix (ids 4-31), where the split's rows hold 8-40 tokens."""
    ids = row["input_ids"][0]
    length = int(rng.integers(64, 129))
    out = rng.integers(C + 1, VOCAB_SIZE, length)
    out[np.sort(rng.choice(length, 3, replace=False))] = ids[ids <= C]
    return {"input_ids": out[None], "attention_mask": np.ones((1, length), np.int64)}


def narrow_mix(row: Row, rng: np.random.Generator) -> Row:
    """Every filler id folded into 4-7; the row's length and markers kept."""
    ids = row["input_ids"].copy()
    filler = ids > C
    ids[filler] = C + 1 + (ids[filler] - C - 1) % 4
    return {"input_ids": ids, "attention_mask": row["attention_mask"]}


class Traffic(threading.Thread):
    """Single-row requests from the text test split at ``RATE`` a second (one client; it does
    not burst to catch up when the machine falls behind); ``shift``, once set, rewrites each
    row. Counts what it sent shifted and keeps any answer other than 200."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.stopped = url, threading.Event()
        self.rows, _ = request_rows(TEXT_TEST_SPLIT_PATH)
        self.shift: Shift | None = None
        self.shifted = 0
        self.refused: list[str] = []

    def run(self) -> None:
        rng = np.random.default_rng(0)
        due = time.monotonic()
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while not self.stopped.is_set():
                shift = self.shift
                row = self.rows[int(rng.integers(len(self.rows)))]
                row = shift(row, rng) if shift is not None else row
                answer = client.post("/v2/models/text/infer", json={"inputs": [
                    {"name": name, "shape": list(array.shape), "datatype": "INT64",
                     "data": array.ravel().tolist()} for name, array in row.items()]})  # fmt: skip
                if answer.status_code != 200:
                    self.refused.append(f"{answer.status_code} {answer.text[:200]}")
                self.shifted += shift is not None
                due = max(due + 1.0 / RATE, time.monotonic() - 1.0)
                self.stopped.wait(due - time.monotonic())


@dataclass
class WatchOutput:
    """The CLI's output lines as they arrive, each with the monotonic time it was read and how
    many requests the traffic had sent shifted by then."""

    traffic: Traffic
    lines: list[tuple[float, int, str]] = field(default_factory=list)

    def read(self, stream: Iterator[str]) -> None:
        for line in stream:
            self.lines.append((time.monotonic(), self.traffic.shifted, line.rstrip("\n")))

    def looks(self, outcome: str = "") -> list[tuple[float, int, str]]:
        return [each for each in self.lines if each[2].startswith(f"watch {outcome}")]

    def judged(self) -> list[str]:
        """Looks that judged every check and found no breach (not inconclusive for want of
        ``min_rows`` rows in the window)."""
        return [line for *_, line in self.lines if line == "watch watching: no breach"]

    def tail(self) -> str:
        return "\n".join(line for _, _, line in self.lines[-20:])


@dataclass(frozen=True)
class Detection:
    looks: int  # the watch's looks from the shift to the action, the action's included
    seconds: float
    shifted_requests: int  # sent shifted when the action was printed
    line: str


@pytest.fixture(scope="module")
def text_gateway(start_gateway: Callable[..., TestGateway]) -> TestGateway:
    """The shipped gateway.yaml (paths made absolute, as the demo serves it), every request
    summarised, no shadow traffic until the watch sets its own rate."""
    settings = {"traffic": {"student_share": 1.0}, "shadow": {"sample_rate": 0.0},
                "drift": {"sample_rate": 1.0}}  # fmt: skip
    return start_gateway({**pair("text").config, **settings})


@contextmanager
def watching(
    gateway: TestGateway, tmp_path: Path, on_breach: str, clean_looks: int = CLEAN_LOOKS
) -> Iterator[tuple[subprocess.Popen[str], WatchOutput, Traffic]]:
    """Unshifted traffic, and `distill-canary watch --model text` recording its reference from
    it; yields once the reference is recorded and ``clean_looks`` looks judged it no breach."""
    gateway.set_share(1.0)  # an earlier test of the module may have rolled it back
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump({"model": "text", "gates": {"min_agreement": 0.9}, "watch": {
        "interval_seconds": LOOK_SECONDS, "reference_seconds": REFERENCE_SECONDS,
        "recent_seconds": RECENT_SECONDS, "min_rows": 100, "on_breach": on_breach}}))  # fmt: skip
    command = [str(BIN / "distill-canary"), "watch", "--model", "text", "--policy", str(policy),
               "--gateway", gateway.url, "--reference", str(tmp_path / "reference.json"),
               "--state", str(tmp_path / "watch.db")]  # fmt: skip
    traffic = Traffic(gateway.url)
    output = WatchOutput(traffic)
    traffic.start()
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=canary_env()) as watch:  # fmt: skip
        assert watch.stdout is not None
        reader = threading.Thread(target=output.read, args=(watch.stdout,), daemon=True)
        reader.start()
        try:
            wait_until(lambda: any("reference recorded" in line for *_, line in output.looks()),
                       60, "the reference")  # fmt: skip
            wait_until(lambda: len(output.judged()) >= clean_looks, 60,
                       f"{clean_looks} judged looks of unshifted traffic")  # fmt: skip
            assert not output.looks("rolled_back") and not output.looks("alerted"), output.tail()
            yield watch, output, traffic
        finally:
            traffic.stopped.set()
            if watch.poll() is None:
                watch.terminate()
                watch.wait(timeout=15)
            reader.join(timeout=5)
            traffic.join(timeout=15)
    assert not traffic.refused, traffic.refused[:3]  # every row, shifted or not, was answered


def shift_until(output: WatchOutput, traffic: Traffic, shift: Shift, outcome: str) -> Detection:
    """Shifts the traffic; waits for the watch's first look with ``outcome``."""
    before = len(output.lines)
    shifted_at = time.monotonic()
    traffic.shift = shift
    wait_until(lambda: any(line.startswith(f"watch {outcome}")
                           for *_, line in output.lines[before:]), 60,
               f"the shift {outcome}")  # fmt: skip
    after = [each for each in output.lines[before:] if each[2].startswith("watch ")]
    index = next(i for i, each in enumerate(after) if each[2].startswith(f"watch {outcome}"))
    at, sent, line = after[index]
    detection = Detection(index + 1, at - shifted_at, sent, line)
    print(f"{shift.__name__}: {detection}")  # the numbers docs/watch.md quotes (pytest -s)
    return detection


def test_watch_keeps_quiet_on_the_split_and_rolls_back_longer_sequences(
    text_gateway: TestGateway, tmp_path: Path
) -> None:
    with watching(text_gateway, tmp_path, "rollback") as (watch, output, traffic):
        found = shift_until(output, traffic, longer, "rolled_back")
        code = watch.wait(timeout=30)
    assert code == 3, output.tail()
    # the lengths drift (the mask's and the ids', the same rows); the predictions may too
    assert re.search(r"max_input_psi (recently )?length (attention_mask|input_ids) drifted",
                     found.line), found.line  # fmt: skip
    assert text_gateway.share() == 0.0
    # measured: the first look after the shift, ~20 shifted rows among the recent part's ~200
    assert found.looks <= 3 and found.seconds < 20, found


def test_watch_alerts_on_a_shifted_token_mix_and_the_student_keeps_serving(
    text_gateway: TestGateway, tmp_path: Path
) -> None:
    # the quiet looks are the first test's to show; here a few, then the shift
    with watching(text_gateway, tmp_path, "alert", clean_looks=3) as (watch, output, traffic):
        found = shift_until(output, traffic, narrow_mix, "alerted")
        assert watch.poll() is None  # an alert starts a new window; the watch goes on
        watch.terminate()
        code = watch.wait(timeout=15)
    assert code == 0, output.tail()
    assert re.search(r"max_input_psi (recently )?tokens input_ids drifted", found.line), found.line
    assert text_gateway.share() == 1.0
    # measured: the third or fourth look (63-91 shifted rows): the mix moves tokens between bins
    # the split fills, where longer rows fill bins it leaves empty
    assert found.looks <= 8 and found.seconds < 20, found
