"""``distill-models``: build the teacher/student pair, sweep for students, and choose one."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console

from models import MODELS_DIR, REGISTRY_PATH, TEACHER_PATH
from models import registry as reg
from models.text import STUDENT_EPOCHS, TEACHER_EPOCHS

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console(width=max(Console().width, 132))  # the frontier table is wide
RegistryOption = Annotated[Path, typer.Option("--registry", help="The registry to read.")]
# The build's recipe: `build` and `seeds` train with it.
TemperatureOption = Annotated[float, typer.Option(help="Distillation temperature T.")]
AlphaOption = Annotated[float, typer.Option(help="Weight of the soft (KL) term.")]
MaxEpochsOption = Annotated[int, typer.Option(help="Upper bound on epochs per model.")]
PatienceOption = Annotated[int, typer.Option(help="Early-stopping patience in epochs.")]
TEMPERATURE, ALPHA, MAX_EPOCHS, PATIENCE, SEEDS = 4.0, 0.8, 400, 40, 10


@app.command()
def build(
    out_dir: Annotated[
        Path, typer.Option(help="Where the ONNX files and registry go.")
    ] = MODELS_DIR,
    cache_dir: Annotated[Path, typer.Option(help="Soft-label cache.")] = MODELS_DIR / ".cache",
    temperature: TemperatureOption = TEMPERATURE,
    alpha: AlphaOption = ALPHA,
    max_epochs: MaxEpochsOption = MAX_EPOCHS,
    patience: PatienceOption = PATIENCE,
    enforce_targets: Annotated[
        bool, typer.Option(help="Exit 1 when a target is missed (off for quick trial builds).")
    ] = True,
    seeds: Annotated[
        int,
        typer.Option(
            min=0,
            help="Seeds for the distilled-vs-baseline comparison (0 skips it; reported, never a "
            "failure).",
        ),
    ] = SEEDS,
) -> None:
    """Train the teacher, distil the student, export both and write the registry's models; then
    compare the distilled student with the hard-label baseline over several seeds."""
    from models.build import build as run_build

    run_build(out_dir, cache_dir, temperature, alpha, max_epochs, patience, enforce_targets, seeds)


@app.command("build-text")
def build_text(
    out_dir: Annotated[
        Path, typer.Option(help="Holds registry.json; the ONNX files go to its text/.")
    ] = MODELS_DIR,
    cache_dir: Annotated[Path, typer.Option(help="Soft-label cache.")] = MODELS_DIR / ".cache",
    enforce_targets: Annotated[
        bool, typer.Option(help="Exit 1 when a target is missed (off for quick trial builds).")
    ] = True,
    teacher_epochs: Annotated[
        int, typer.Option(min=1, help="Upper bound for the teacher.")
    ] = TEACHER_EPOCHS,
    student_epochs: Annotated[
        int, typer.Option(min=1, help="Upper bound per student.")
    ] = STUDENT_EPOCHS,
) -> None:
    """The second pair: a transformer sequence classifier (input_ids, attention_mask) distilled
    into a small one on the synthetic marker-order task; ONNX files, INT8 student and the
    registry's pairs.text (models/text/)."""
    from models.text.build import build as run_build

    run_build(out_dir, cache_dir, enforce_targets, teacher_epochs, student_epochs)


@app.command()
def seeds(
    count: Annotated[int, typer.Option("--seeds", min=2, help="Seeds 0 .. N-1.")] = SEEDS,
    teacher: Annotated[Path, typer.Option(help="The teacher's ONNX file.")] = TEACHER_PATH,
    registry: Annotated[
        Path, typer.Option(help="The registry --record writes to.")
    ] = REGISTRY_PATH,
    cache_dir: Annotated[Path, typer.Option(help="Soft-label cache.")] = MODELS_DIR / ".cache",
    temperature: TemperatureOption = TEMPERATURE,
    alpha: AlphaOption = ALPHA,
    max_epochs: MaxEpochsOption = MAX_EPOCHS,
    patience: PatienceOption = PATIENCE,
    record: Annotated[
        bool, typer.Option(help="Write the result into the registry's distillation_vs_baseline.")
    ] = False,
) -> None:
    """Does distillation beat hard labels? Distil the build's student from the teacher's ONNX
    file and train its hard-label baseline for each seed; print every seed, the mean difference
    in test accuracy, its 95 % t-interval and the verdict (the build's comparison, on its own)."""
    from models.seeds import run_seeds

    run_seeds(count, teacher, registry, cache_dir, temperature, alpha, max_epochs, patience,
              record, console)  # fmt: skip


@app.command()
def sweep(
    quick: Annotated[bool, typer.Option(help="The small grid CI runs.")] = False,
    out_dir: Annotated[
        Path, typer.Option(help="Holds registry.json; candidates go to its candidates/.")
    ] = MODELS_DIR,
    teacher: Annotated[Path, typer.Option(help="The teacher's ONNX file.")] = TEACHER_PATH,
    cache_dir: Annotated[
        Path, typer.Option(help="Soft labels and finished candidates (for resuming).")
    ] = MODELS_DIR / ".cache",
    jobs: Annotated[int, typer.Option(help="Candidates trained at once.")] = os.cpu_count() or 1,
    seed: Annotated[
        int, typer.Option(help="Weights, shuffling: the same seed, the same files.")
    ] = 0,
) -> None:
    """Distil a student for every T x alpha x architecture, quantize each to INT8 (dynamic and
    static QDQ), measure every file and register it; resumes an interrupted sweep."""
    from models.sweep import FULL_GRID, QUICK_GRID, run_sweep

    run_sweep(QUICK_GRID if quick else FULL_GRID, teacher, out_dir, cache_dir, jobs, seed, console)


@app.command()
def pareto(
    registry: RegistryOption = REGISTRY_PATH,
    plot: Annotated[
        Path | None, typer.Option(help="The PNG; default pareto.png next to the registry.")
    ] = None,
) -> None:
    """Print the accuracy-latency Pareto frontier and what the sweep teaches; draw the plot."""
    from models.pareto import frontier_table, lessons_table, quantization_table
    from models.pareto import plot as draw

    data = _with_candidates(registry)
    table, beaten = frontier_table(data)
    console.print(table)
    console.print(lessons_table(data))
    console.print(quantization_table(data))
    target = plot or registry.parent / "pareto.png"
    draw(data, beaten, target)
    console.print(f"plot: {target}")


@app.command()
def select(
    max_accuracy_drop: Annotated[
        float, typer.Option(help="Accuracy budget below the teacher's, e.g. 0.02 (2 points).")
    ],
    by: Annotated[Literal["latency", "size"], typer.Option(help="What to minimise.")] = "latency",
    registry: RegistryOption = REGISTRY_PATH,
) -> None:
    """Print the id of the fastest (or smallest) candidate within the accuracy budget; why it
    won goes to stderr, so ``$(distill-models select ...)`` is just the id."""
    data = _with_candidates(registry)
    choice = reg.select(data, max_accuracy_drop, by)
    teacher_accuracy = reg.teacher(data)["test_accuracy"]
    err = Console(stderr=True)
    if choice is None:
        err.print(f"no accepted candidate is within {max_accuracy_drop} of the teacher's test "
                  f"accuracy ({teacher_accuracy:.4f})")  # fmt: skip
        raise typer.Exit(code=1)
    chosen = choice.chosen
    err.print(
        f"chosen: {chosen['name']} ({chosen['id']}): test accuracy "
        f"{chosen['test_accuracy']:.4f} (teacher {teacher_accuracy:.4f}), "
        f"{chosen['latency_ms']['batch_1'] * 1000:.2f} us at batch 1, "
        f"{chosen['file_bytes']:,} bytes; {choice.eligible} candidates within budget"
    )
    if choice.runner_up is not None:
        runner = choice.runner_up
        err.print(
            f"runner-up: {runner['name']} ({runner['id']}), test accuracy "
            f"{runner['test_accuracy']:.4f}: lost on {by}: {choice.why_runner_up_lost}"
        )
    print(chosen["id"])


@app.command()
def profile(
    model_id: Annotated[
        str, typer.Argument(help="The registry id of a model of the digits or the text pair.")
    ],
    registry: RegistryOption = REGISTRY_PATH,
) -> None:
    """Store in the model's registry entry a profile of its pair's training split: its inputs
    and the model's predictions in the gateway's drift bins (default ``drift:`` settings), and
    the model's accuracy on the split; the post-promotion watch's reference with
    ``watch.reference: registry``."""
    from gateway.errors import GatewayError
    from models.drift_profile import training_profile

    try:
        entry = reg.lookup(registry, model_id)
        made = training_profile(registry, model_id)
        reg.set_profile(registry, model_id, made)
    except (reg.UnreadableRegistry, reg.UnknownModel, ValueError, GatewayError) as exc:
        print(f"distill-models profile: {exc}", file=sys.stderr)
        raise typer.Exit(code=1) from None
    counts = made["counts"]
    print(f"{entry.get('name', model_id)} ({model_id}): profile of {counts['rows']:.0f} training "
          f"rows, accuracy {made['accuracy']:.4f}, stored in {registry}")  # fmt: skip


def _with_candidates(path: Path) -> dict[str, object]:
    data = reg.load(path)
    if not reg.candidates(data):
        print(f"{path} has no candidates: run `distill-models sweep` first", file=sys.stderr)
        raise typer.Exit(code=1)
    return data


def main() -> None:
    app()


if __name__ == "__main__":
    main()
