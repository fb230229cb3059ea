"""`make demo`: the whole story on the embedded default, on one machine.

One gateway serves both shipped pairs: ``digits`` (an MLP on 64 features) and ``text`` (a
BERT-shaped encoder taking two INT64 inputs of any length, models/text/). Part 1 replays each
pair's saved test split through it with tritonclient at fixed student shares and shows, per
backend, what the gateway measured. Part 2 runs two canary rollouts at the same time, one per
model, with the real `distill-canary` CLI while traffic generators replay the splits and post
labels: the shipped digits student is promoted 5 -> 25 -> 100 % while a deliberately bad text
student is rolled back at its first step, neither touching the other's share.
``--pair digits`` or ``--pair text`` tells the older story on one pair alone: its good student
promoted, then its bad one rolled back.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import httpx
import typer
import yaml
from rich.console import Console
from rich.table import Table

from controller import promtext
from controller.local.processes import BIN, GatewayProcess
from controller.local.traffic import TrafficGenerator, TrafficReport
from controller.rollout import EXIT_PROMOTED, EXIT_ROLLED_BACK
from gateway.roles import Protocol
from models import MODELS_DIR, STUDENT_PATH, TEACHER_PATH, TEST_SPLIT_PATH
from models.text import (
    TEXT_BAD_STUDENT_PATH,
    TEXT_GATEWAY_CONFIG_PATH,
    TEXT_STUDENT_PATH,
    TEXT_TEST_SPLIT_PATH,
)

BAD_STUDENT_PATH = MODELS_DIR / "student_bad.onnx"
DEMO_POLICY = Path(__file__).parents[1] / "policies" / "demo.yaml"
PairName = Literal["digits", "text"]
DemoPairs = Literal["both", "digits", "text"]


@dataclass(frozen=True)
class Pair:
    """What the demo runs on: the gateway's config (teacher, student, inputs), the model name
    clients use, the test split the traffic replays, and the two students it rolls out."""

    config: dict[str, Any]
    model: str
    split: Path
    student: Path
    bad_student: Path


def pair(name: PairName) -> Pair:
    if name == "digits":
        config = {"teacher": {"path": str(TEACHER_PATH), "cost_per_hour": 3.0},
                  "student": {"path": str(STUDENT_PATH), "cost_per_hour": 0.5}}  # fmt: skip
        return Pair(config, "digits", TEST_SPLIT_PATH, STUDENT_PATH, BAD_STUDENT_PATH)
    # models/text/gateway.yaml, its model paths made absolute (the demo's config lives elsewhere)
    config = yaml.safe_load(TEXT_GATEWAY_CONFIG_PATH.read_text())
    for role in ("teacher", "student"):
        config[role]["path"] = str(TEXT_GATEWAY_CONFIG_PATH.parent / config[role]["path"])
    return Pair(config, config["model"], TEXT_TEST_SPLIT_PATH, TEXT_STUDENT_PATH,
                TEXT_BAD_STUDENT_PATH)  # fmt: skip


def policy_for(chosen: Pair, policy: Path, work_dir: Path) -> Path:
    """The policy, naming the pair's model: the controller reads that model's metrics."""
    settings = yaml.safe_load(policy.read_text())
    if settings.get("model") == chosen.model:
        return policy
    path = work_dir / f"policy-{chosen.model}.yaml"
    path.write_text(yaml.safe_dump({**settings, "model": chosen.model}))
    return path


# Wide enough for the tables when the output is a pipe or a CI log.
console = Console(width=None if sys.stdout.isatty() else 120)
SHARES = (0.0, 0.05, 0.25, 1.0)
REQUESTS_PER_SHARE = 720  # the 360-example test split, twice


@dataclass(frozen=True)
class BackendRow:
    share: float
    backend: str
    requests: float
    accuracy: float
    p50_ms: float
    p99_ms: float
    cost_per_1k: float


def backend_row(
    window: promtext.Snapshot, share: float, backend: str, model: str = "digits"
) -> BackendRow:
    ours = {"backend": backend, "model": model}
    requests = promtext.select(window, "gateway_requests_total", code="200", **ours)
    labelled = promtext.select(window, "gateway_feedback_total", **ours)
    correct = promtext.select(window, "gateway_feedback_correct_total", **ours)
    latency = promtext.buckets(window, "gateway_request_duration_seconds", **ours)
    cost = promtext.select(window, "gateway_inference_cost_dollars_total", **ours)
    return BackendRow(
        share=share,
        backend=backend,
        requests=requests,
        accuracy=correct / labelled if labelled else float("nan"),
        p50_ms=promtext.histogram_quantile(0.50, latency) * 1000,
        p99_ms=promtext.histogram_quantile(0.99, latency) * 1000,
        cost_per_1k=cost / requests * 1000 if requests else float("nan"),
    )


def traffic_for(gateway: GatewayProcess, chosen: Pair | None = None) -> TrafficGenerator:
    """Over gRPC when the gateway serves it (the demo's --protocol grpc), else HTTP."""
    chosen = chosen or pair("digits")
    return TrafficGenerator(gateway.url, model=chosen.model, split_path=chosen.split,
                            grpc_address=gateway.grpc_address)  # fmt: skip


def replay_at_fixed_shares(
    gateway: GatewayProcess, requests: int = REQUESTS_PER_SHARE, chosen: Pair | None = None
) -> None:
    chosen = chosen or pair("digits")
    console.rule(f"[bold]Part 1: the {chosen.model} pair's split, at fixed student shares")
    protocol = "gRPC" if gateway.grpc_address else "HTTP"
    table = Table(title=f"replaying the {chosen.model} test split with tritonclient over "
                  f"{protocol}, labels as feedback")  # fmt: skip
    for column in ("share", "backend", "requests", "accuracy", "agreement (shadow)", "p50 ms",
                   "p99 ms", "$ per 1k req"):  # fmt: skip
        table.add_column(column, justify="right")
    generator = traffic_for(gateway, chosen)
    model = chosen.model
    for share in SHARES:
        gateway.set_share(share, model)
        before = promtext.parse(httpx.get(f"{gateway.url}/metrics").text)
        report = generator.run(requests=requests, workers=2)
        after = promtext.parse(httpx.get(f"{gateway.url}/metrics").text)
        window = promtext.increase(after, before)
        compared = promtext.select(window, "gateway_shadow_comparisons_total", model=model)
        agreed = promtext.select(window, "gateway_shadow_agreements_total", model=model)
        agreement = f"{agreed / compared:.3f} of {compared:.0f}" if compared else "-"
        for backend in ("teacher", "student"):
            row = backend_row(window, share, backend, model)
            if not row.requests:
                continue
            table.add_row(
                f"{share:.0%}", backend, f"{row.requests:.0f}", f"{row.accuracy:.3f}", agreement,
                f"{row.p50_ms:.2f}", f"{row.p99_ms:.2f}", f"{row.cost_per_1k:.6f}",
            )  # fmt: skip
        console.print(
            f"share {share:>4.0%}: {len(report.samples)} requests, {len(report.errors)} errors"
        )
    console.print(table)


@dataclass(frozen=True)
class RolloutOutcome:
    scenario: str
    student: str
    exit_code: int
    seconds: float
    final_share: float
    last_line: str
    started_at: float = 0.0  # time.monotonic() when its controller started
    # part 2: the model's requests while it rolled out beside the other (None: not counted),
    # and of those (or their labels) the ones a client saw fail
    requests: int | None = None
    client_errors: int = 0


def run_controller(command: list[str], token: str, prefix: str = "") -> tuple[int, str]:
    """``distill-canary`` with the gateways' token, its lines printed as they come (after
    ``prefix``, the model, when two run at once); its exit code and last line."""
    console.print(f"{prefix}$ distill-canary " + " ".join(command[1:]), highlight=False,
                  soft_wrap=True, markup=False)  # fmt: skip
    last_line = ""
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "DISTILL_GATEWAY_ADMIN_TOKEN": token},
    ) as controller:  # fmt: skip
        assert controller.stdout is not None
        for line in controller.stdout:
            console.print(prefix + line.rstrip(), highlight=False, soft_wrap=True, markup=False)
            last_line = line.strip() or last_line
    return controller.returncode, last_line


def gateway_config(student: Path, chosen: Pair | None = None) -> dict[str, object]:
    config = (chosen or pair("digits")).config
    return {**config, "shadow": {"sample_rate": 0.25},
            "student": {**config["student"], "path": str(student)}}  # fmt: skip


def canary_scenario(
    name: str,
    student: Path,
    work_dir: Path,
    token: str,
    policy: Path = DEMO_POLICY,
    protocol: str = "http",
    chosen: Pair | None = None,
) -> RolloutOutcome:
    console.rule(f"[bold]Part 2: {name}")
    gateway = GatewayProcess(work_dir, gateway_config(student, chosen), admin_token=token,
                             grpc=protocol == "grpc").start()  # fmt: skip
    stop = threading.Event()
    traffic = threading.Thread(
        target=lambda: traffic_for(gateway, chosen).run(stop=stop, workers=3), daemon=True
    )
    traffic.start()
    command = [
        str(BIN / "distill-canary"), "run", "--gateway", gateway.url,
        "--policy", str(policy), "--state", str(work_dir / f"{student.stem}.db"),
    ]  # fmt: skip
    started = time.monotonic()
    try:
        exit_code, last_line = run_controller(command, token)
        final_share = gateway.share(chosen.model if chosen else "digits")
    finally:
        stop.set()
        traffic.join()
        gateway.stop()
    return RolloutOutcome(
        name, student.name, exit_code, time.monotonic() - started, final_share,
        last_line,
    )  # fmt: skip


def summary(outcomes: list[RolloutOutcome]) -> None:
    table = Table(title="the two rollouts")
    for column in ("scenario", "student", "exit", "seconds", "share now", "outcome"):
        table.add_column(column)
    for outcome in outcomes:
        table.add_row(
            outcome.scenario, outcome.student, str(outcome.exit_code), f"{outcome.seconds:.0f}",
            f"{outcome.final_share:.0%}", outcome.last_line,
        )  # fmt: skip
    console.print(table)


def model_entry(chosen: Pair, student: Path | None = None) -> dict[str, Any]:
    """The pair as an entry of a gateway's ``models:`` list (its student replaced if given)."""
    config = {key: value for key, value in chosen.config.items() if key != "model"}
    if student is not None:
        config["student"] = {**config["student"], "path": str(student)}
    return {"name": chosen.model, **config}


def both_pairs_config(digits_student: Path, text_student: Path) -> dict[str, Any]:
    return {"shadow": {"sample_rate": 0.25},
            "models": [model_entry(pair("digits"), digits_student),
                       model_entry(pair("text"), text_student)]}  # fmt: skip


def rollouts_at_once(
    work_dir: Path, token: str, policy: Path, protocol: str
) -> list[RolloutOutcome]:
    """Part 2 on one gateway of both pairs: the good digits student and the bad text student,
    each rolled out by its own controller (``--model``), at the same time."""
    console.rule("[bold]Part 2: two rollouts at once on one gateway: a good digits student and "
                 "a bad text student")  # fmt: skip
    digits, text = pair("digits"), pair("text")
    plan = [(digits, digits.student, "a good student is promoted"),
            (text, text.bad_student, "a bad student is rolled back")]  # fmt: skip
    gateway = GatewayProcess(work_dir, both_pairs_config(digits.student, text.bad_student),
                             admin_token=token, grpc=protocol == "grpc").start()  # fmt: skip
    stop = threading.Event()
    sent: dict[str, TrafficReport] = {}

    def replay(chosen: Pair) -> None:
        sent[chosen.model] = traffic_for(gateway, chosen).run(stop=stop, workers=2)

    traffic = [threading.Thread(target=replay, args=(chosen,), daemon=True)
               for chosen, _, _ in plan]  # fmt: skip
    for thread in traffic:
        thread.start()
    outcomes: list[RolloutOutcome | None] = [None, None]

    def roll_out(index: int, chosen: Pair, student: Path, scenario: str) -> None:
        command = [
            str(BIN / "distill-canary"), "run", "--gateway", gateway.url, "--model", chosen.model,
            "--policy", str(policy_for(chosen, policy, work_dir)),
            "--state", str(work_dir / "rollouts.db"),
        ]  # fmt: skip
        started = time.monotonic()
        exit_code, last_line = run_controller(command, token, f"[{chosen.model}] ")
        outcomes[index] = RolloutOutcome(
            f"{chosen.model}: {scenario}", student.name, exit_code,
            time.monotonic() - started, gateway.share(chosen.model), last_line,
            started)  # fmt: skip

    try:
        controllers = [threading.Thread(target=roll_out, args=(index, *each))
                       for index, each in enumerate(plan)]  # fmt: skip
        for thread in controllers:
            thread.start()
        for thread in controllers:
            thread.join()
    finally:
        stop.set()
        for thread in traffic:
            thread.join()
        gateway.stop()
    ended = []
    for outcome in outcomes:
        if outcome is None:
            continue
        model = outcome.scenario.split(":")[0]
        report = sent.get(model, TrafficReport())
        console.print(f"[{model}] while both rolled out: {len(report.samples)} requests, "
                      f"{len(report.errors)} errors", highlight=False, markup=False)  # fmt: skip
        ended.append(replace(outcome, requests=len(report.samples),
                             client_errors=len(report.errors)))  # fmt: skip
    return ended


def run_demo(
    policy: Path = DEMO_POLICY,
    protocol: str = "http",
    requests_per_share: int = REQUESTS_PER_SHARE,
    pair_name: DemoPairs = "both",
) -> list[RolloutOutcome]:
    """Part 1, then the two rollouts of part 2, then the summary table; the traffic goes over
    ``protocol`` (http or grpc), on both pairs at once (``both``) or on the ``pair_name`` pair
    alone."""
    if pair_name == "both":
        return run_both(policy, protocol, requests_per_share)
    token = secrets.token_urlsafe(16)
    chosen = pair(pair_name)
    with tempfile.TemporaryDirectory(prefix="distill-demo-") as tmp:
        work_dir = Path(tmp)
        policy = policy_for(chosen, policy, work_dir)
        gateway = GatewayProcess(work_dir, {**chosen.config, "shadow": {"sample_rate": 0.25}},
                                 admin_token=token, grpc=protocol == "grpc")  # fmt: skip
        console.print(f"starting the gateway on the shipped {pair_name} teacher/student pair ...")
        gateway.start()
        try:
            console.print(f"gateway ready at {gateway.url}")
            replay_at_fixed_shares(gateway, requests_per_share, chosen)
        finally:
            gateway.stop()
        outcomes = [
            canary_scenario("a good student is promoted", chosen.student, work_dir, token, policy,
                            protocol, chosen),
            canary_scenario("a bad student is rolled back", chosen.bad_student, work_dir, token,
                            policy, protocol, chosen),
        ]  # fmt: skip
    summary(outcomes)
    return outcomes


def run_both(policy: Path, protocol: str, requests_per_share: int) -> list[RolloutOutcome]:
    token = secrets.token_urlsafe(16)
    with tempfile.TemporaryDirectory(prefix="distill-demo-") as tmp:
        work_dir = Path(tmp)
        digits, text = pair("digits"), pair("text")
        gateway = GatewayProcess(work_dir, both_pairs_config(digits.student, text.student),
                                 admin_token=token, grpc=protocol == "grpc")  # fmt: skip
        console.print("starting one gateway on both shipped pairs (digits, text) ...")
        gateway.start()
        try:
            served = httpx.get(f"{gateway.url}/v2/models").json()["models"]
            console.print(f"gateway ready at {gateway.url}, serving "
                          + ", ".join(model["name"] for model in served))  # fmt: skip
            for chosen in (digits, text):
                replay_at_fixed_shares(gateway, requests_per_share, chosen)
        finally:
            gateway.stop()
        outcomes = rollouts_at_once(work_dir, token, policy, protocol)
    summary(outcomes)
    return outcomes


def demo(
    protocol: Annotated[
        Protocol, typer.Option(help="How the traffic reaches the gateway: http or grpc.")
    ] = "http",
    pair_name: Annotated[
        DemoPairs,
        typer.Option(
            "--pair",
            help="both: the two shipped pairs on one gateway, rolled out at "
            "once; or one: digits (an MLP) or text (a transformer).",
        ),
    ] = "both",
) -> None:
    """The end-to-end demo: the splits at fixed shares, then a good student promoted and a bad
    one rolled back by the real controller."""
    outcomes = run_demo(protocol=protocol, pair_name=pair_name)
    expected = [EXIT_PROMOTED, EXIT_ROLLED_BACK]
    if [outcome.exit_code for outcome in outcomes] != expected or any(
        outcome.client_errors or outcome.requests == 0 for outcome in outcomes
    ):
        console.print("[red]the demo did not end as expected")
        raise SystemExit(1)


def main() -> None:
    typer.run(demo)


if __name__ == "__main__":
    main()
