"""`distill-canary`: run a rollout, and drive it (status, pause, resume, promote, approve, abort,
retry).

Commands reach the running controller through its state file (SQLite): access to that file is
what authorises them, so it is created readable by its owner only. A command waits for the
controller's acknowledgement and prints what it did; with no live controller it says so and fails.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Annotated

import httpx
import typer
from prometheus_client import CollectorRegistry, start_http_server
from rich.console import Console
from rich.progress import Progress

from controller import registry_records
from controller.actuator import Fleet, FleetNotConfirmed, GatewayFleet
from controller.exporter import ControllerMetrics
from controller.fleet_store import StoreFleet, fleet_models
from controller.machine import SKIP_GATES
from controller.model_choice import (
    ModelChoiceError,
    choose_rollout_model,
    choose_run_model,
    gateway_models,
)
from controller.notify import Notifications, NotifyError
from controller.operator import NoLiveController, abort_now, send_and_wait
from controller.policy import Policy, PolicyError, load_policy
from controller.progress import make_reporter
from controller.rollout import (
    EXIT_REFUSED,
    EXIT_ROLLED_BACK,
    CanaryController,
    Launch,
    OnSigterm,
    Start,
)
from controller.rollout_store import (
    Command,
    Phase,
    RolloutState,
    RolloutStore,
    StateError,
    new_holder_id,
)
from controller.shadow_rate import ShadowRateSetter
from controller.sources import MetricsSource, create_source
from controller.status import render_models, render_status
from controller.watch import (
    Look,
    Outcome,
    Reference,
    Watch,
    promoted_rollout,
    reference_of_last_step,
    registry_reference,
    served_student,
    watch_lease_seconds,
)
from controller.webhooks import WAITING_GATES, GateType
from models import REGISTRY_PATH

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False)
DEFAULT_STATE = Path("distill-canary.db")
StateOption = Annotated[Path, typer.Option("--state", help="The rollout's state file.")]
RolloutOption = Annotated[
    int | None, typer.Option("--rollout", help="A rollout's id (default: the latest).")
]
ModelOption = Annotated[
    str | None,
    typer.Option(
        "--model",
        help="The model whose rollout to act on (default: the one model the state file holds "
        "rollouts of; required when it holds several).",
    ),
]
EXIT_USAGE = 2
EXIT_FAILED = 1
EXIT_UNCONFIRMED = 4


def _fail(message: str, code: int = EXIT_FAILED) -> typer.Exit:
    typer.echo(f"distill-canary: {message}", err=True)
    return typer.Exit(code)


@app.command()
def run(
    policy: Annotated[Path, typer.Option("--policy", help="The rollout policy (YAML).")],
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="The model to roll out (overrides the policy's model:); required when the "
            "gateways serve several and the policy names none. One rollout per model at a time: "
            "rollouts of other models run beside it on the same state file.",
        ),
    ] = None,
    gateway: Annotated[
        list[str] | None,
        typer.Option("--gateway", help="A gateway's base URL; repeat for replicas."),
    ] = None,
    state_url: Annotated[
        str | None,
        typer.Option(
            help="The gateways' state store (redis://host:port/db, rediss:// for TLS): the "
            "replicas are found in its registry at every tick, instead of a fixed --gateway list. "
            "The ACL user and password may come from DISTILL_GATEWAY_STATE__USERNAME and "
            "DISTILL_GATEWAY_STATE__PASSWORD."
        ),
    ] = None,
    state_key_prefix: Annotated[
        str, typer.Option(help="The gateways' state.key_prefix.")
    ] = "distill-gateway",
    prometheus: Annotated[
        str | None, typer.Option(help="Prometheus base URL; default: scrape the gateways.")
    ] = None,
    prometheus_selector: Annotated[
        str,
        typer.Option(
            help="Extra label matchers for every PromQL query, e.g. "
            'namespace="ml",job="distill-gateway".'
        ),
    ] = "",
    state: StateOption = DEFAULT_STATE,
    new: Annotated[
        bool, typer.Option("--new", help="Start a new rollout when the latest one has ended.")
    ] = False,
    from_current: Annotated[
        bool,
        typer.Option(
            "--from-current",
            help="Gateways already serve the student: start at the step matching their share.",
        ),
    ] = False,
    reset: Annotated[
        bool,
        typer.Option(
            "--reset", help="Gateways already serve the student: start from the first step."
        ),
    ] = False,
    name: Annotated[
        str | None,
        typer.Option(
            help="Name the rollout (a Job's student, say): resumed while unfinished, refused once "
            "it has ended, started when the latest rollout is another one that has ended."
        ),
    ] = None,
    on_sigterm: Annotated[
        OnSigterm, typer.Option(help="On SIGTERM: persist (save, exit 143) or rollback.")
    ] = OnSigterm.PERSIST,
    wait_for_lease: Annotated[
        float,
        typer.Option(
            help="Wait this long for another controller's lease to lapse (a pod that "
            "replaced a killed one) instead of refusing at once."
        ),
    ] = 0.0,
    metrics_port: Annotated[
        int, typer.Option(help="Serve the controller's metrics on this port (0: off).")
    ] = 0,
    metrics_host: Annotated[
        str, typer.Option(help="Address the metrics port binds (0.0.0.0 in a pod).")
    ] = "127.0.0.1",
    metrics_linger: Annotated[
        float,
        typer.Option(
            help="Keep serving metrics this long after the end, so Prometheus scrapes "
            "the final phase, promotion or rollback."
        ),
    ] = 15.0,
    student: Annotated[
        str | None,
        typer.Option(
            help="A model registry id (`distill-models select` prints one): every gateway loads "
            "it as the student (at share 0) before traffic moves; the rollout, its metrics and "
            "report name it and its lineage, and its outcome goes into the registry's history."
        ),
    ] = None,
    registry: Annotated[
        Path, typer.Option(help="The model registry --student is looked up in.")
    ] = REGISTRY_PATH,
) -> None:
    """Run one rollout to its end, or resume the unfinished one: exit 0 when promoted, 3 when
    rolled back, 4 when some gateway never confirmed the rollback, 5 when refused (another
    controller holds the rollout, the latest rollout has ended, or gateways already serve the
    student)."""
    if from_current and reset:
        raise _fail("--from-current and --reset exclude each other", EXIT_USAGE)
    if bool(gateway) == bool(state_url):
        raise _fail("name the gateways with --gateway (repeat for replicas) or find them in "
                    "their state store with --state-url, one or the other", EXIT_USAGE)  # fmt: skip
    try:
        rollout_policy = load_policy(policy)
    except PolicyError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None
    gateways = [url.rstrip("/") for url in gateway or []]
    store_url = _with_prefix(state_url, state_key_prefix)
    try:
        chosen_model = choose_run_model(
            model,
            rollout_policy.model if "model" in rollout_policy.model_fields_set else None,
            lambda: _served_models(gateways, store_url),
        )
    except ModelChoiceError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None
    rollout_policy = rollout_policy.model_copy(update={"model": chosen_model})
    start = Start.FROM_CURRENT if from_current else Start.RESET if reset else Start.FRESH
    try:
        chosen = registry_records.describe(registry, student) if student else None
    except LookupError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None
    launch = Launch(gateways, prometheus, new, start, name, on_sigterm, wait_for_lease,
                    prometheus_selector, store_url, chosen)  # fmt: skip
    _run_controller(rollout_policy, launch, state, (metrics_host, metrics_port), metrics_linger)


@app.command()
def retry(
    state: StateOption = DEFAULT_STATE,
    model: ModelOption = None,
    metrics_port: Annotated[int, typer.Option(help="As for run.")] = 0,
    metrics_host: Annotated[str, typer.Option(help="As for run.")] = "127.0.0.1",
    metrics_linger: Annotated[float, typer.Option(help="As for run.")] = 15.0,
) -> None:
    """Start a rolled-back rollout again from its first step, with the same policy, gateways,
    metrics source and student (a new rollout; the rolled-back one stays in the history)."""
    store = _open(state)
    rollout = _load(store, None, _rollout_model(store, model))
    if rollout.phase is not Phase.ROLLED_BACK:
        raise _fail(f"rollout {rollout.rollout_id} is {rollout.phase.value}; retry restarts a "
                    "rolled-back rollout")  # fmt: skip
    try:
        rollout_policy = Policy.model_validate(rollout.policy)
    except ValueError:
        raise _fail(f"rollout {rollout.rollout_id} has no stored policy; use run --new") from None
    _run_controller(rollout_policy, Launch.again(rollout), state, (metrics_host, metrics_port),
                    metrics_linger)  # fmt: skip


def _run_controller(
    rollout_policy: Policy,
    launch: Launch,
    state: Path,
    metrics_address: tuple[str, int],
    metrics_linger: float,
) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise here
    store = _create(state)
    registry = CollectorRegistry()
    metrics = ControllerMetrics(
        registry, rollout_policy.model, gates=list(rollout_policy.gates.configured())
    )
    metrics_host, metrics_port = metrics_address
    if metrics_port:
        start_http_server(metrics_port, addr=metrics_host, registry=registry)
    token = os.environ.get("DISTILL_GATEWAY_ADMIN_TOKEN")
    with httpx.Client(timeout=5.0) as client:
        fleet = _fleet(launch.gateways, launch.state_url, rollout_policy.model, token, client)
        try:
            source = create_source(fleet.scrape_targets, launch.prometheus,
                                   rollout_policy.model, client,
                                   launch.prometheus_selector)  # fmt: skip
        except ValueError as exc:
            raise _fail(str(exc), EXIT_USAGE) from None
        try:
            controller = CanaryController(
                policy=rollout_policy,
                fleet=fleet,
                source=source,
                store=store,
                reporter=make_reporter(rollout_policy),
                metrics=metrics,
            )
        except NotifyError as exc:
            raise _fail(str(exc), EXIT_USAGE) from None
        # PID 1 in a pod gets SIGTERM and nothing else before SIGKILL: stop as launch says.
        signal.signal(signal.SIGTERM, lambda *_: controller.request_stop())
        try:
            code = controller.run(launch)
        except StateError as exc:
            raise _fail(f"refused: {_watched(store, rollout_policy.model) or exc}",
                        EXIT_REFUSED) from None  # fmt: skip
        if rollout_policy.watch is not None and controller.state.phase is Phase.PROMOTED:
            # the policy's watch: stay, judging the student against its last step's traffic,
            # under the lease the rollout just gave back (a rollout started since refuses)
            try:
                store.acquire(controller.holder, watch_lease_seconds(rollout_policy), time.time(),
                              rollout_policy.model)  # fmt: skip
            except StateError as exc:
                raise _fail(f"promoted, but not watched: {exc}", EXIT_REFUSED) from None
            last_step = reference_of_last_step(source, controller.state, rollout_policy.model,
                                               time.time())  # fmt: skip
            reference, note = _reference(rollout_policy, fleet, controller.state, REGISTRY_PATH,
                                         last_step)  # fmt: skip
            try:
                code = _watch(rollout_policy, source, fleet, controller.state, reference, None,
                              (store, controller.holder), metrics, (client, token),
                              note)  # fmt: skip
            finally:
                store.release(controller.holder)
    registry_records.record_outcome(controller.state)
    if metrics_port and metrics_linger > 0:
        time.sleep(metrics_linger)
    final = controller.state
    reason = f": {final.rollback_reason}" if final.rollback_reason else ""
    typer.echo(f"rollout {final.phase.value}{reason} (rollout {final.rollout_id})")
    raise typer.Exit(code)


@app.command()
def watch(
    model: Annotated[str, typer.Option("--model", help="The promoted model to watch.")],
    policy: Annotated[Path, typer.Option("--policy", help="A policy with a watch: section.")],
    gateway: Annotated[
        list[str] | None,
        typer.Option("--gateway", help="A gateway's base URL; repeat for replicas."),
    ] = None,
    reference: Annotated[
        Path | None,
        typer.Option(
            help="The reference (JSON): read when the file exists, else recorded from the first "
            "watch.reference_seconds of traffic and written there."
        ),
    ] = None,
    state: Annotated[
        Path,
        typer.Option(
            "--state",
            help="The state file whose lease the watch holds (refused while a rollout or "
            "another watch holds it; `run` is refused while the watch does); its looks go "
            "into the latest rollout's history when that promoted this model, else a new one.",
        ),
    ] = DEFAULT_STATE,
    registry: Annotated[
        Path,
        typer.Option(help="The model registry whose profile watch.reference: registry reads."),
    ] = REGISTRY_PATH,
    metrics_port: Annotated[
        int,
        typer.Option(
            help="Serve the watch's metrics (canary_watch_*, notifications) on this port (0: off)."
        ),
    ] = 0,
    metrics_host: Annotated[
        str, typer.Option(help="Address the metrics port binds (0.0.0.0 in a pod).")
    ] = "127.0.0.1",
) -> None:
    """Watch a promoted student: drift of its inputs and predictions, label-free accuracy and
    the policy's watch.gates against a reference; roll back or alert (watch.on_breach). Exit 3
    after a confirmed rollback, 4 when stopped before every gateway confirmed share 0, 5 when
    refused (the state file's lease is held) or when the lease was lost."""
    try:
        watched = load_policy(policy).model_copy(update={"model": model})
    except PolicyError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None
    if watched.watch is None or not gateway:
        raise _fail("watch needs a policy with a watch: section and at least one --gateway",
                    EXIT_USAGE)  # fmt: skip
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    known = Reference.load(reference) if reference is not None and reference.exists() else None
    token = os.environ.get("DISTILL_GATEWAY_ADMIN_TOKEN")
    with httpx.Client(timeout=5.0) as client:
        fleet = GatewayFleet([url.rstrip("/") for url in gateway], token, client, model)
        source = create_source(fleet.scrape_targets, None, model, client)
        store, holder = _create(state), new_holder_id()
        try:
            store.acquire(holder, watch_lease_seconds(watched), time.time(), model)
        except StateError as exc:
            raise _fail(f"refused: {exc}", EXIT_REFUSED) from None
        exported = CollectorRegistry()
        metrics = ControllerMetrics(exported, model)
        if metrics_port:
            start_http_server(metrics_port, addr=metrics_host, registry=exported)
        try:
            rollout = _watched_rollout(store, model, holder)
            chosen, note = _reference(watched, fleet, rollout, registry, known)
            code = _watch(watched, source, fleet, rollout, chosen, reference, (store, holder),
                          metrics, (client, token), note)  # fmt: skip
        except StateError as exc:
            raise _fail(f"refused: {exc}", EXIT_REFUSED) from None
        finally:
            store.release(holder)
    raise typer.Exit(code)


def _watched(store: RolloutStore, model: str) -> str:
    """Why a watch refuses a new rollout of ``model`` ('' when no watch holds its lease)."""
    lease, latest = store.lease(model), store.load(model=model)
    if lease is None or not lease.alive(time.time()) or latest is None:
        return ""
    if not latest.phase.terminal:
        return ""
    return (
        f"a post-promotion watch ({lease.holder}) holds model {model} after rollout "
        f"{latest.rollout_id}; stop it (SIGTERM) before a new rollout, so the two do not "
        "both set the share"
    )


def _watched_rollout(store: RolloutStore, model: str, holder: str) -> RolloutState:
    """The rollout ``distill-canary watch`` records its looks in: the latest, when it promoted
    this model; else a new record of the promoted model."""
    latest = store.load(model=model)
    if latest is not None and not latest.phase.terminal:
        raise StateError(
            f"rollout {latest.rollout_id} is {latest.phase.value}: resume it with run, which "
            "watches it after promotion when its policy says so"
        )
    promoted = latest is not None and latest.phase is Phase.PROMOTED
    if latest is not None and promoted:
        return latest
    return store.add(promoted_rollout(model), holder)


def _reference(policy: Policy, fleet: Fleet, rollout: RolloutState, registry: Path,
               otherwise: Reference | None) -> tuple[Reference | None, str]:  # fmt: skip
    """The watch's reference: with ``watch.reference: registry`` the student's profile (the
    rollout's student, else the one the gateways serve), else ``otherwise``; and why the
    registry's was not used ('' when it was, or was not asked for)."""
    assert policy.watch is not None
    if policy.watch.reference != "registry":
        return otherwise, ""
    student = rollout.student
    if student is not None:
        registry, student_id = Path(student.get("registry", registry)), student.get("id")
    else:
        student_id = served_student(fleet)
    found, why = registry_reference(registry, student_id)
    if found is None:
        typer.echo(f"watch: {why}; the production reference serves instead", err=True)
        return otherwise, why
    return found, ""


def _watch(policy: Policy, source: MetricsSource, fleet: Fleet, rollout: RolloutState,
           reference: Reference | None, save_to: Path | None, lease: tuple[RolloutStore, str],
           metrics: ControllerMetrics, gateways: tuple[httpx.Client, str | None],
           note: str = "") -> int:  # fmt: skip
    """Runs the watch, under ``lease`` (the state file and the holder that took it), until a
    confirmed rollback (3), a lost lease (5) or SIGTERM (0; 4 while share 0 is unconfirmed),
    counted in ``metrics`` (its looks, verdicts, window and notifications); SIGTERM wakes it at
    once, not at the next look. ``gateways``: the client and admin token that set the watch's
    shadow sample rate."""
    assert policy.watch is not None
    try:
        notifications = Notifications(policy.notify, policy.watch.interval_seconds,
                                      metrics.notified)  # fmt: skip
    except NotifyError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None
    store, holder = lease
    shadow = None
    if policy.watch.shadow_sample_rate is not None:
        client, token = gateways
        shadow = ShadowRateSetter(policy.model, policy.watch.shadow_sample_rate, client,
                                  fleet.admin_urls, token)  # fmt: skip
    watcher = Watch(policy, source, fleet, notifications.emit, rollout, reference,
                    holder=holder, store=store, metrics=metrics, shadow=shadow,
                    reference_note=note)  # fmt: skip
    stop = threading.Event()  # set by SIGTERM: ends the wait between looks at once
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def show(look: Look) -> None:
        typer.echo(f"watch {look.outcome.value}: {look.reason}")
        if save_to is not None and watcher.reference is not None and not save_to.exists():
            watcher.reference.save(save_to)

    last: Look | None = None
    try:
        last = watcher.run(stop.is_set, sleep=stop.wait, on_look=show)
    finally:
        notifications.close(notifications.flush_seconds)
        # put the gateways' rate back, unless another controller has taken the model over
        lost = last is not None and last.outcome is Outcome.LEASE_LOST
        for problem in shadow.restore() if shadow is not None and not lost else []:
            typer.echo(f"watch: the shadow sample rate before the watch is not restored on "
                       f"{problem}", err=True)  # fmt: skip
    codes = {Outcome.ROLLED_BACK: EXIT_ROLLED_BACK, Outcome.LEASE_LOST: EXIT_REFUSED,
             Outcome.ROLLBACK_UNCONFIRMED: EXIT_UNCONFIRMED}  # fmt: skip
    return codes.get(last.outcome, 0)


@app.command()
def status(
    state: StateOption = DEFAULT_STATE,
    rollout: RolloutOption = None,
    model: Annotated[
        str | None,
        typer.Option("--model", help="Show this model's latest rollout (default: every model's)."),
    ] = None,
    history: Annotated[
        int, typer.Option(min=0, help="How many past decisions to show (0: none).")
    ] = 20,
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="Refresh until the rollout ends (Ctrl-C stops).")
    ] = False,
    every: Annotated[float, typer.Option(min=0.1, help="Seconds between refreshes.")] = 2.0,
) -> None:
    """Phase, step, intended and actual share per gateway, the controller's heartbeat, what
    happens next and when, the last analysis, and the latest decisions: of each model's latest
    rollout (a table of them first when the state file holds several models'), or of one."""
    store = _open(state)
    console = Console(width=None if sys.stdout.isatty() else 160)
    if model is not None:
        _rollout_model(store, model)  # refused unless the file holds a rollout of it
    while True:
        if rollout is not None or model is not None:
            shown = [_load(store, rollout, model)]
        else:
            shown = [_load(store, None, each) for each in store.models()] or [_load(store, None)]
        now = time.time()
        if watch and sys.stdout.isatty():
            console.clear()
        if len(shown) > 1:
            console.print(render_models(shown, store, now))
        with httpx.Client(timeout=2.0) as client:
            for each in shown:
                if len(shown) > 1:
                    console.rule(f"model {each.model}")
                text = render_status(each, store, client, now, history)
                console.print(text, highlight=False, soft_wrap=False)
        if not watch or all(each.phase.terminal for each in shown):
            return
        time.sleep(every)


@app.command()
def report(
    state: StateOption = DEFAULT_STATE,
    rollout: RolloutOption = None,
    model: ModelOption = None,
    out: Annotated[Path, typer.Option(help="The HTML file to write.")] = Path("rollout.html"),
) -> None:
    """Write a self-contained HTML report of a rollout (PNG charts inlined): --rollout's, else
    the model's latest."""
    store = _open(state)
    shown = _load(store, rollout, None if rollout is not None else _rollout_model(store, model))
    from controller.report import write_report

    write_report(shown, out)
    typer.echo(f"wrote {out}")


PRODUCTION_POLICY = Path(__file__).parent / "policies" / "production.yaml"


@app.command()
def simulate(
    policy: Annotated[
        Path, typer.Option("--policy", help="The rollout policy (YAML) to judge with.")
    ] = PRODUCTION_POLICY,
    runs: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Rollouts per scenario and judge (300); --post-promotion: "
            "runs per shift size (20).",
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seeds every draw: the same seed, the same table.")] = 1,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write one object per scenario and judge here.")
    ] = None,
    png: Annotated[Path | None, typer.Option(help="Write the power curves here (PNG).")] = None,
    share: Annotated[
        list[float] | None, typer.Option(help="Student share(s) to simulate; default 0.05, 0.25.")
    ] = None,
    workers: Annotated[int, typer.Option(min=1, help="Processes to run scenarios in.")] = (
        os.cpu_count() or 1
    ),
    post_promotion: Annotated[
        bool,
        typer.Option(
            "--post-promotion",
            help="Simulate the policy's watch instead (its input-drift rule, on 16 features of "
            "28 bins at --rows-per-second): false alarms per day over --days unshifted days, "
            "and the detection delay per shift size over --runs runs each.",
        ),
    ] = False,
    days: Annotated[float, typer.Option(min=0.01, help="--post-promotion: unshifted days.")] = 2.0,
    rows_per_second: Annotated[
        float, typer.Option(min=0.1, help="--post-promotion: summarised rows a second.")
    ] = 10.0,
) -> None:
    """Measure decision quality: simulated rollouts through this controller's own analysis and
    decisions, beside a Flagger-style threshold judge and a Kayenta-style Mann-Whitney judge;
    with --post-promotion, the watch's false alarms per day and detection delays."""
    if post_promotion:
        _simulate_watch(policy, days, runs or 20, seed, rows_per_second)
        return
    runs = runs or 300
    from controller.simulation.report import print_table, write_json
    from controller.simulation.runner import run_scenarios
    from controller.simulation.scenarios import simulated_scenarios

    try:
        loaded = load_policy(policy)
    except PolicyError as exc:
        raise _fail(str(exc), EXIT_USAGE) from exc
    if share and any(not 0 < s <= 1 for s in share):
        raise _fail("--share is a fraction of live traffic, in (0, 1]", EXIT_USAGE)
    scenarios = simulated_scenarios(loaded.gates.configured(),
                                    tuple(share) if share else (0.05, 0.25))  # fmt: skip
    console = Console(stderr=True)
    started = time.perf_counter()
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(f"{len(scenarios)} scenarios x {runs} runs", total=len(scenarios))
        summaries = run_scenarios(scenarios, loaded, runs, seed, workers=workers,
                                  progress=lambda: progress.advance(task))  # fmt: skip
    print_table(summaries, Console(width=170))
    rollouts = len(summaries) * runs
    typer.echo(f"{rollouts} simulated rollouts in {time.perf_counter() - started:.1f} s "
               f"({policy.name}, seed {seed})")  # fmt: skip
    if json_path is not None:
        write_json(summaries, json_path)
        typer.echo(f"wrote {json_path}")
    if png is not None:
        from controller.simulation.plot import write_power_curves

        write_power_curves(summaries, png)
        typer.echo(f"wrote {png}")


def _simulate_watch(policy: Path, days: float, runs: int, seed: int,
                    rows_per_second: float) -> None:  # fmt: skip
    from controller.watch_policy import WatchPolicy
    from controller.watch_simulation import Setting, report

    try:
        loaded = load_policy(policy)
    except PolicyError as exc:
        raise _fail(str(exc), EXIT_USAGE) from exc
    watch = loaded.watch or WatchPolicy()
    if watch.max_input_psi is None:
        raise _fail(f"{policy.name}'s watch judges no input drift (max_input_psi: null): "
                    "nothing to simulate", EXIT_USAGE)  # fmt: skip
    started = time.perf_counter()
    setting = Setting.of(watch, loaded.confidence, rows_per_second=rows_per_second)
    report(setting, days, runs, seed, typer.echo)
    source = "its watch: section" if loaded.watch else "the default watch: (none in the policy)"
    typer.echo(f"simulated in {time.perf_counter() - started:.1f} s ({policy.name}, {source}, "
               f"seed {seed})")  # fmt: skip


def _operator_command(state: Path, model: str | None, command: Command, argument: str = "") -> None:
    store = _open(state, read_only=False)
    rollout = _load(store, None, _rollout_model(store, model))
    if rollout.phase.terminal:
        raise _fail(f"nothing to {command.value}: rollout {rollout.rollout_id} is "
                    f"{rollout.phase.value}")  # fmt: skip
    try:
        outcome = send_and_wait(store, rollout, command, argument=argument)
    except NoLiveController as exc:
        hint = " (abort --now acts on the gateways directly)" if command is Command.ABORT else ""
        raise _fail(f"{command.value} not sent: {exc}{hint}") from None
    if not outcome.acted:
        raise _fail(f"{command.value}: {outcome.note}")
    typer.echo(f"{command.value}: {outcome.note}")


@app.command()
def pause(state: StateOption = DEFAULT_STATE, model: ModelOption = None) -> None:
    """Hold the rollout at its step (it still rolls back on a failing gate)."""
    _operator_command(state, model, Command.PAUSE)


@app.command()
def resume(state: StateOption = DEFAULT_STATE, model: ModelOption = None) -> None:
    """Let a paused rollout progress again."""
    _operator_command(state, model, Command.RESUME)


@app.command()
def promote(
    state: StateOption = DEFAULT_STATE,
    model: ModelOption = None,
    full: Annotated[bool, typer.Option("--full", help="Go straight to 100 %.")] = False,
    skip_gates: Annotated[
        bool,
        typer.Option(
            "--skip-gates",
            help="Pass the move's waiting gates (manual approvals, confirm-* webhooks) too; "
            "without it, a move a gate guards is refused. Recorded in the history and the event.",
        ),
    ] = False,
) -> None:
    """Skip the rest of this step's analysis and go to the next step (--full: to 100 %)."""
    _operator_command(state, model, Command.PROMOTE_FULL if full else Command.PROMOTE,
                      SKIP_GATES if skip_gates else "")  # fmt: skip


@app.command()
def approve(
    gate: Annotated[
        GateType,
        typer.Option(
            "--gate",
            help="The gate to release: one the rollout waits at and its policy lists under "
            "manual_approval (confirm-rollout, confirm-traffic-increase, confirm-promotion).",
        ),
    ],
    state: StateOption = DEFAULT_STATE,
    model: ModelOption = None,
) -> None:
    """Release a manual gate the rollout waits at now; the history records which gate and who
    approved it (user@host, the user from the caller's uid). Like pause and resume, it reaches
    the live controller through the state file, which only its owner may write: write access
    to that file is what authorises an approval."""
    if gate not in WAITING_GATES:
        raise _fail(f"{gate.value} is not a gate a rollout waits at; approve one of: "
                    + ", ".join(WAITING_GATES), EXIT_USAGE)  # fmt: skip
    _operator_command(state, model, Command.APPROVE, gate.value)


@app.command()
def abort(
    state: StateOption = DEFAULT_STATE,
    model: ModelOption = None,
    now: Annotated[
        bool,
        typer.Option(
            "--now", help="With no live controller: set share 0 on the gateways directly."
        ),
    ] = False,
) -> None:
    """Roll back now: share 0 on every gateway."""
    if not now:
        _operator_command(state, model, Command.ABORT)
        return
    store = _open(state, read_only=False)
    rollout = _load(store, None, _rollout_model(store, model))
    if rollout.phase.terminal:
        raise _fail(f"nothing to abort: rollout {rollout.rollout_id} is {rollout.phase.value}")
    try:
        outcome = send_and_wait(store, rollout, Command.ABORT)
    except NoLiveController:
        token = os.environ.get("DISTILL_GATEWAY_ADMIN_TOKEN")
        with httpx.Client(timeout=5.0) as client:
            fleet = _fleet(rollout.gateways, rollout.state_url, rollout.model, token, client)
            try:
                done = abort_now(store, rollout, fleet, time.time)
            except StateError as exc:
                raise _fail(f"abort --now refused: {exc}") from None
        typer.echo(f"abort: {done.note}")
        raise typer.Exit(0 if done.confirmed else EXIT_UNCONFIRMED) from None
    if not outcome.acted:
        raise _fail(f"abort: {outcome.note}")
    typer.echo(f"abort: {outcome.note}")


def _with_prefix(state_url: str | None, key_prefix: str) -> str | None:
    """The store's URL with its key prefix as a fragment (recorded with the rollout, for retry
    and abort --now): ``redis://host:6379/0#distill-gateway``."""
    return None if state_url is None else f"{state_url.partition('#')[0]}#{key_prefix}"


def _fleet(
    gateways: list[str], state_url: str | None, model: str, token: str | None,
    client: httpx.Client,
) -> Fleet:  # fmt: skip
    if state_url is None:
        return GatewayFleet(gateways, token, client, model)
    url, prefix, password, username = _store_address(state_url)
    return StoreFleet(url, model, prefix, password, username=username)


def _store_address(state_url: str) -> tuple[str, str, str | None, str | None]:
    """The store's URL and key prefix (``url#prefix``), and its credentials from the variables
    the gateways read theirs from."""
    url, _, prefix = state_url.partition("#")
    return (url, prefix or "distill-gateway", os.environ.get("DISTILL_GATEWAY_STATE__PASSWORD"),
            os.environ.get("DISTILL_GATEWAY_STATE__USERNAME"))  # fmt: skip


def _create(path: Path) -> RolloutStore:
    try:
        return RolloutStore.create(path)
    except StateError as exc:
        raise _fail(str(exc)) from None


def _open(path: Path, read_only: bool = True) -> RolloutStore:
    try:
        return RolloutStore.open_existing(path, read_only)
    except StateError as exc:
        raise _fail(str(exc)) from None


def _served_models(gateways: list[str], state_url: str | None) -> list[str]:
    """What the gateways serve: each --gateway's ``GET /v2/models``, or the models the state
    store's live replicas registered under."""
    if state_url is None:
        with httpx.Client(timeout=5.0) as client:
            return gateway_models(gateways, client)
    try:
        return fleet_models(*_store_address(state_url))
    except FleetNotConfirmed as exc:
        raise ModelChoiceError(f"{exc}: pass --model") from None


def _rollout_model(store: RolloutStore, model: str | None) -> str:
    try:
        return choose_rollout_model(store, model)
    except ModelChoiceError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None


def _load(store: RolloutStore, rollout_id: int | None, model: str | None = None) -> RolloutState:
    rollout = store.load(rollout_id, model)
    if rollout is None:
        known = store.rollout_ids()
        if rollout_id is None or not known:
            raise _fail(f"no rollout recorded in {store.path}")
        raise _fail(f"no rollout {rollout_id} in {store.path}; its rollouts are: "
                    + ", ".join(map(str, known)))  # fmt: skip
    return rollout


def main() -> None:
    app()
