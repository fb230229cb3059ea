"""`distill-canary report`: one self-contained HTML page (PNG charts inlined) telling a rollout's
story from its state file, for the people who were not watching the dashboard."""

from __future__ import annotations

import base64
import html
import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from controller.state import DecisionRecord, RolloutState

MARKED_ACTIONS = {"set": "#888888", "promoted": "green", "rolled back": "red"}
BACKEND_COLOURS = {"teacher": "#1f77b4", "student": "#ff7f0e"}


def write_report(state: RolloutState, out: Path) -> None:
    out.write_text(render(state))


def render(state: RolloutState) -> str:
    analyses = [r for r in state.history if r.observations]
    t0 = state.started_at

    def share(axes: Any) -> None:
        times = [r.at - t0 for r in state.history]
        axes.step(times, [r.share for r in state.history], where="post", color="black")
        axes.set_ylim(-0.05, 1.05)

    def latency(axes: Any) -> None:
        for backend, colour in BACKEND_COLOURS.items():
            _plot(axes, t0, analyses, [backend, "p50_ms"], f"p50 {backend}", colour, ":")
            _plot(axes, t0, analyses, [backend, "p99_ms"], f"p99 {backend}", colour, "-")

    def agreement(axes: Any) -> None:
        _plot(axes, t0, analyses, ["agreement"], "agreement", "green", "-")

    def per_backend(key: str) -> Callable[[Any], None]:
        def draw(axes: Any) -> None:
            for backend, colour in BACKEND_COLOURS.items():
                _plot(axes, t0, analyses, [backend, key], backend, colour, "-")

        return draw

    charts = [
        ("Student share", _chart(state, share, "share")),
        ("Backend latency p50 and p99", _chart(state, latency, "ms")),
        ("Shadow agreement with the teacher", _chart(state, agreement, "fraction")),
        ("Accuracy from feedback", _chart(state, per_backend("accuracy"), "fraction")),
        ("Cost per 1,000 requests", _chart(state, per_backend("cost_per_1k"), "dollars")),
    ]
    return _page(state, charts)


def _chart(state: RolloutState, draw: Callable[[Any], None], unit: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(9, 3), dpi=100)
    draw(axes)
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
    """One line from the observations at ``path`` (e.g. ["student", "p99_ms"]), gaps skipped."""
    points = []
    for record in analyses:
        value: Any = record.observations
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if value is not None:
            points.append((record.at - t0, float(value)))
    if points:
        axes.plot([p[0] for p in points], [p[1] for p in points], style, color=colour,
                  label=label, marker=".")  # fmt: skip


def _page(state: RolloutState, charts: list[tuple[str, str]]) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(state.started_at))
    ended = state.history[-1].at if state.history else state.started_at
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
<h1>Rollout report</h1>
<p><b>Outcome:</b> {outcome}</p>
<p><b>Started:</b> {started}; <b>lasted</b> {ended - state.started_at:.0f} s;
<b>steps:</b> {steps}; <b>reached step</b> {state.step_index + 1}.</p>
<p>Dashed lines mark decisions: grey a new step, green the promotion, red the rollback.</p>
{figures}
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
