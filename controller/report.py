"""`distill-canary report`: one self-contained HTML page (PNG charts inlined) telling a rollout's
story from its state file, for the people who were not watching the dashboard."""

from __future__ import annotations

import base64
import html
import io
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from controller import gate_table
from controller.registry_records import summary
from controller.rollout_store import DecisionRecord, RolloutState

ENDS_A_PAUSE = ("resume", "advance", "promote", "promote-full", "promoted", "rolled back")
MARKED_ACTIONS = {"set": "#888888", "promoted": "green", "rolled back": "red"}
BACKEND_COLOURS = {"teacher": "#1f77b4", "student": "#ff7f0e"}


def write_report(state: RolloutState, out: Path) -> None:
    out.write_text(render(state))


def render(state: RolloutState) -> str:
    analyses = [r for r in state.history if r.observations]
    t0 = state.started_at
    gates = state.policy.get("gates", {})

    def share(axes: Any) -> None:
        times = [r.at - t0 for r in state.history]
        axes.step(times, [r.share for r in state.history], where="post", color="black")
        axes.set_ylim(-0.05, 1.05)

    def latency(axes: Any) -> None:
        for backend, colour in BACKEND_COLOURS.items():
            _plot(axes, t0, analyses, [backend, "p50_ms"], f"p50 {backend}", colour, ":")
            _plot(axes, t0, analyses, [backend, "p99_ms"], f"p99 {backend}", colour, "-")
        _threshold(axes, gates.get("max_latency_ms"), "max_latency_ms")

    def agreement(axes: Any) -> None:
        _plot(axes, t0, analyses, ["agreement"], "agreement", "green", "-")
        _threshold(axes, gates.get("min_agreement"), "min_agreement")

    def per_backend(key: str, gate: str | None = None) -> Callable[[Any], None]:
        def draw(axes: Any) -> None:
            for backend, colour in BACKEND_COLOURS.items():
                _plot(axes, t0, analyses, [backend, key], backend, colour, "-")
            if gate:
                _threshold(axes, gates.get(gate), gate)

        return draw

    charts = [
        ("Student share", _chart(state, share, "share")),
        *((f"Gate {gate}{_dry(state, gate)}: what the judge saw, its interval against the "
           "threshold", _chart(state, _gate_drawing(state, gate), unit))
          for gate, unit in _judged_gates(state)),
        ("Backend latency p50 and p99", _chart(state, latency, "ms")),
        ("Shadow agreement with the teacher", _chart(state, agreement, "fraction")),
        ("Accuracy from feedback", _chart(state, per_backend("accuracy"), "fraction")),
        ("Cost per 1,000 requests",
         _chart(state, per_backend("cost_per_1k", "max_cost_per_1k"), "dollars")),
    ]  # fmt: skip
    return _page(state, charts)


VERDICT_COLOURS = {"pass": "green", "fail": "red", "inconclusive": "#999999"}


@dataclass(frozen=True)
class GatePoint:
    """One analysis of one gate: what the judge saw and what the analysis decided."""

    at: float  # seconds since the rollout started
    value: float
    low: float
    high: float
    threshold: float
    samples: float
    verdict: str
    decision: str  # the record's action: hold, advance, rolled back...


def gate_history(state: RolloutState, gate: str) -> list[GatePoint]:
    points = []
    for record in state.history:
        for result in record.gates:
            if result["gate"] == gate and result["verdict"] != "skipped":
                number = {key: float(result.get(key, math.nan))
                          for key in ("value", "low", "high", "threshold", "samples")}  # fmt: skip
                points.append(
                    GatePoint(
                        record.at - state.started_at,
                        **number,
                        verdict=str(result["verdict"]),
                        decision=record.action,
                    )
                )
    return points


def _dry(state: RolloutState, gate: str) -> str:
    """Marks a dry-run gate's chart: it was measured and shown, and never decided."""
    dry = any(r.get("dry_run") for record in state.history for r in record.gates
              if r["gate"] == gate)  # fmt: skip
    return " (dry run: never decides)" if dry else ""


def _judged_gates(state: RolloutState) -> list[tuple[str, str]]:
    """Every gate some analysis judged, in the policy's order, with its unit."""
    judged = {result["gate"] for record in state.history for result in record.gates}
    order = [*state.policy.get("gates", {}), *sorted(judged)]
    gates = [gate for gate in dict.fromkeys(order) if gate in judged]
    return [(gate, gate_table.UNITS.get(gate, " fraction").strip()) for gate in gates]


def _gate_drawing(state: RolloutState, gate: str) -> Callable[[Any], None]:
    """The gate's value over time with its interval as a band, the threshold as a line, each
    analysis coloured by its verdict, and the samples behind it on the right-hand axis. The
    y-axis always takes in the threshold, so a flat value far from it does not read as a swing."""
    points = gate_history(state, gate)

    def draw(axes: Any) -> None:
        if not points:
            return
        times = [p.at for p in points]
        finite = [v for p in points for v in (p.value, p.low, p.high, p.threshold)
                  if math.isfinite(v)]  # fmt: skip
        bottom, top = min(finite), max(finite)
        margin = (top - bottom) * 0.1 or abs(top) * 0.1 or 1.0
        clip = (bottom - margin, top + margin)
        axes.fill_between(times, [_clipped(p.low, clip) for p in points],
                          [_clipped(p.high, clip) for p in points], color="#1f77b4", alpha=0.2,
                          linewidth=0, label="interval")  # fmt: skip
        valued = [(p.at, p.value) for p in points if math.isfinite(p.value)]
        if valued:
            axes.plot(*zip(*valued, strict=True), "-", color="#1f77b4", linewidth=1)
        for verdict, colour in VERDICT_COLOURS.items():
            shown = [(p.at, p.value) for p in points
                     if p.verdict == verdict and math.isfinite(p.value)]  # fmt: skip
            if shown:
                axes.scatter(*zip(*shown, strict=True), color=colour, s=14, zorder=3,
                             label=verdict)  # fmt: skip
        _threshold(axes, points[-1].threshold, gate)
        axes.set_ylim(*clip)
        samples = axes.twinx()
        samples.step(times, [p.samples for p in points], where="post", color="#bbbbbb")
        samples.set_ylabel("samples", color="#888888")
        samples.set_ylim(bottom=0)

    return draw


def _clipped(value: float, bounds: tuple[float, float]) -> float:
    return min(max(value, bounds[0]), bounds[1]) if not math.isnan(value) else bounds[0]


def _threshold(axes: Any, value: float | None, gate: str) -> None:
    if value is not None:
        axes.axhline(value, color="red", linestyle="-.", linewidth=1, label=f"{gate} {value:g}")


def pause_spans(state: RolloutState) -> list[tuple[float, float]]:
    """(start, end) of each pause, by an operator or a drift, in seconds since the start."""
    spans, opened = [], None
    for record in state.history:
        pausing = record.action == "pause" or (
            record.action == "drift" and "paused" in record.reason
        )
        if pausing and opened is None:
            opened = record.at
        elif record.action in ENDS_A_PAUSE and opened is not None:
            spans.append((opened - state.started_at, record.at - state.started_at))
            opened = None
    if opened is not None:
        spans.append((opened - state.started_at, _end(state) - state.started_at))
    return spans


def downtime_spans(state: RolloutState) -> list[tuple[float, float]]:
    """When no controller ran: from the last decision before each ``resumed`` to that resume."""
    spans = []
    for before, record in itertools.pairwise(state.history):
        if record.action == "resumed":
            spans.append((before.at - state.started_at, record.at - state.started_at))
    return spans


COMPARED = (
    ("accuracy", "accuracy", "{:.1%}"),
    ("p50_ms", "p50 latency (ms)", "{:.2f}"),
    ("p99_ms", "p99 latency (ms)", "{:.2f}"),
    ("cost_per_1k", "cost per 1,000 requests ($)", "{:.5f}"),
    ("cpu_ms_per_request", "CPU per request (ms)", "{:.3f}"),
)
"""The seed's comparison of a student with its teacher: accuracy, speed, cost, resources."""


def _comparison_rows(state: RolloutState) -> str:
    """Each backend over the whole rollout, from the last analysis (each pools the rollout)."""
    pooled = next((r.observations["rollout"] for r in reversed(state.history)
                   if "rollout" in r.observations), None)  # fmt: skip
    if pooled is None:
        return '<tr><td colspan="4">no analysis yet</td></tr>'
    rows = []
    for key, label, shape in COMPARED:
        teacher, student = pooled["teacher"].get(key), pooled["student"].get(key)
        cells = [shape.format(v) if v is not None else "n/a" for v in (teacher, student)]
        ratio = f"{student / teacher:.2f}" if teacher and student is not None else "n/a"
        rows.append(f"<tr><td>{label}</td><td>{cells[0]}</td><td>{cells[1]}</td>"
                    f"<td>{ratio}</td></tr>")  # fmt: skip
    return "\n".join(rows)


def _too_few_requests(record: DecisionRecord) -> bool:
    """An analysis made before the step had ``min_requests``: its points are not estimates."""
    return any(g["verdict"] == "inconclusive" and "student requests" in str(g["reason"])
               for g in record.gates)  # fmt: skip


def _end(state: RolloutState) -> float:
    return state.ended_at or (state.history[-1].at if state.history else state.started_at)


def _chart(state: RolloutState, draw: Callable[[Any], None], unit: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(9, 3), dpi=100)
    draw(axes)
    for start, end in pause_spans(state):
        axes.axvspan(start, end, color="#999999", alpha=0.25, linewidth=0)
    for start, end in downtime_spans(state):
        axes.axvspan(start, end, facecolor="none", edgecolor="red", hatch="//", linewidth=0)
    axes.set_xlim(0, max(1.0, _end(state) - state.started_at))  # every chart on one time axis
    for record in state.history:
        colour = MARKED_ACTIONS.get(record.action)
        if colour:
            axes.axvline(record.at - state.started_at, color=colour, linestyle="--", linewidth=1)
    axes.set_xlabel("seconds since the rollout started")
    axes.set_ylabel(unit)
    axes.grid(alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(loc="best", fontsize="small")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode()


def _plot(
    axes: Any,
    t0: float,
    analyses: list[DecisionRecord],
    path: list[str],
    label: str,
    colour: str,
    style: str,
) -> None:
    """One line from the observations at ``path`` (e.g. ["student", "p99_ms"]), gaps skipped;
    analyses made on fewer than ``min_requests`` are hollow circles off the line."""
    points: list[tuple[float, float]] = []
    early: list[tuple[float, float]] = []
    for record in analyses:
        value: Any = record.observations
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if value is not None:
            (early if _too_few_requests(record) else points).append((record.at - t0, float(value)))
    if points:
        axes.plot([p[0] for p in points], [p[1] for p in points], style, color=colour,
                  label=label, marker=".")  # fmt: skip
    if early:
        axes.scatter([p[0] for p in early], [p[1] for p in early], facecolors="none",
                     edgecolors=colour, label=f"{label} (< min_requests)")  # fmt: skip


def _student_paragraph(state: RolloutState) -> str:
    """Which student, from which recipe: what an SRE reading an alert needs to know."""
    if state.student is None:
        return ""
    lineage = state.student.get("lineage") or {}
    rows = "".join(f"<tr><th>{html.escape(key)}</th><td>{html.escape(str(value))}</td></tr>"
                   for key, value in lineage.items())  # fmt: skip
    return (f'<p id="student"><b>Student:</b> {html.escape(summary(state.student))}; test '
            f"accuracy {state.student.get('test_accuracy')}</p>"
            f'<table id="lineage">{rows}</table>')  # fmt: skip


def _page(state: RolloutState, charts: list[tuple[str, str]]) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(state.started_at))
    ended = _end(state)
    policy = html.escape(yaml.safe_dump(state.policy, sort_keys=False) if state.policy
                         else "(not recorded: a rollout from an earlier version)")  # fmt: skip
    steps = ", ".join(f"{step:g} %" for step in state.steps)
    outcome = html.escape(state.phase.value)
    if state.rollback_reason:
        outcome += f": {html.escape(state.rollback_reason)}"
    rows = "\n".join(
        f"<tr><td>{r.at - state.started_at:.0f}</td><td>{r.step_index + 1}</td>"
        f"<td>{r.share:.0%}</td><td>{html.escape(r.action)}</td>"
        f"<td>{html.escape(r.reason)}</td></tr>"
        for r in state.history if r.action != "hold"
    )  # fmt: skip
    gate_rows = "\n".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in gate_table.row(gate)) + "</tr>"
        for gate in state.last_analysis
    )
    gate_header = "".join(f"<th>{name}</th>" for name in gate_table.HEADER)
    comparison = _comparison_rows(state)
    figures = "\n".join(
        f"<figure><figcaption><h3>{html.escape(title)}</h3></figcaption>"
        f'<img class="chart" alt="{html.escape(title)}" src="data:image/png;base64,{png}"></figure>'
        for title, png in charts
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Rollout report: {outcome}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 980px; }}
td, th {{ border-bottom: 1px solid #ddd; padding: 4px 8px; text-align: left; font-size: 90%; }}
figure {{ margin: 1.5em 0; }} img.chart {{ max-width: 100%; }}
</style></head>
<body>
<h1>Rollout report: rollout {state.rollout_id}</h1>
<p><b>Outcome:</b> {outcome}</p>
{_student_paragraph(state)}
<p><b>Started:</b> {started}; <b>lasted</b> {ended - state.started_at:.0f} s;
<b>steps:</b> {steps}; <b>reached step</b> {state.step_index + 1}.</p>
<p>Dashed lines mark decisions: grey a new step, green the promotion, red the rollback. Grey
bands are pauses; red hatching is time when no controller ran. Dash-dotted red lines are the
gates' thresholds; hollow circles are analyses made before the step had <code>min_requests</code>,
so they are not estimates to read. Each gate's chart shows what the judge saw at every analysis:
the value, its interval at the policy's confidence (the band), the threshold, the verdict (green
pass, red fail, grey inconclusive) and, on the right-hand axis, the samples behind it. A gate
passes only when its whole band is on the right side of the threshold.</p>
<h2>Teacher and student over the rollout</h2>
<table id="comparison"><tr><th></th><th>teacher</th><th>student</th><th>student / teacher</th></tr>
{comparison}
</table>
{figures}
<h2>Gates at the last analysis</h2>
<table id="gates"><tr>{gate_header}</tr>
{gate_rows}
</table>
<h2>Policy</h2>
<pre id="policy">{policy}</pre>
<h2>Decisions</h2>
<table><tr><th>s</th><th>step</th><th>share</th><th>action</th><th>why</th></tr>
{rows}
</table>
<script>
window.addEventListener("load", () => {{
  const charts = [...document.querySelectorAll("img.chart")];
  document.body.dataset.chartsLoaded = charts.filter(i => i.complete && i.naturalWidth > 0).length;
}});
</script>
</body></html>
"""
