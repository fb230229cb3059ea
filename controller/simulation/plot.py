"""Power curves: how often each judge rolls back (does not promote) as the student gets worse."""

from __future__ import annotations

from pathlib import Path

from controller.simulation.runner import Summary
from controller.simulation.scenarios import REALISTIC_RPS

JUDGE_STYLE = {"controller": "-", "threshold": "--", "mann_whitney": ":"}
# The two families of scenarios that form a curve: (x label, the scenario field, its baseline).
CURVES = (
    ("accuracy drop (points)", "accuracy_drop", 100.0),
    ("student p99 / teacher p99", "p99_ratio", 1.0),
)


def _on_curve(summary: Summary, field: str) -> bool:
    """Realistic traffic, every label on time, and only this field moved from the good student."""
    plain = (summary.label_fraction == 1.0 and summary.label_delay_seconds == 0
             and summary.gap_intervals == 0 and summary.error_rate == 0)  # fmt: skip
    # A curve moves one truth at the realistic steps: not a student at a gate's threshold, one
    # beside a noisy teacher, or a dark launch (each a story of its own in the table).
    apart = ("agreement", "at threshold")
    if (not plain or summary.scenario.startswith(apart) or "noisy" in summary.scenario
            or summary.share == 0):  # fmt: skip
        return False
    return summary.p99_ratio == 1.0 if field == "accuracy_drop" else summary.accuracy_drop == 0


def write_power_curves(summaries: list[Summary], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    shares = sorted({s.share for s in summaries})
    figure, axes = plt.subplots(1, len(CURVES), figsize=(6 * len(CURVES), 4.2), squeeze=False)
    for axis, (label, field, scale) in zip(axes[0], CURVES, strict=True):
        for judge, style in JUDGE_STYLE.items():
            for share in shares:
                points = sorted(
                    (getattr(s, field) * (scale if field == "accuracy_drop" else 1.0),
                     1.0 - s.promoted_rate)
                    for s in summaries
                    if s.judge == judge and s.share == share and _on_curve(s, field)
                    and s.requests_per_second == REALISTIC_RPS
                )  # fmt: skip
                if points:
                    xs, ys = zip(*points, strict=True)
                    axis.plot(xs, ys, style, marker="o", markersize=3,
                              label=f"{judge}, share {share:.0%}")  # fmt: skip
        axis.set_xlabel(label)
        axis.set_ylabel("not promoted (rolled back or timed out)")
        axis.set_ylim(-0.03, 1.03)
        axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    figure.suptitle(f"Power curves at {REALISTIC_RPS:g} req/s over the fleet")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
