"""Command line: ``cnn-grader`` or ``python -m autograder``.

Each subcommand is a thin shell over one module, so the same work is scriptable from Python.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Autograder for the CNN-on-MNIST unit: build assignments, provision MNIST, grade notebooks.",
)
console = Console()


@app.callback()
def _root() -> None:
    """Autograder for the CNN-on-MNIST unit."""


@app.command()
def data(
    mnist: Optional[Path] = typer.Option(None, "--mnist", help="A Keras-format mnist.npz to verify and use."),
    offline: bool = typer.Option(False, "--offline", help="Do not try the network."),
) -> None:
    """Provision MNIST (offline-capable), verify it by content hash and say where it is."""
    from autograder import data as mnist_data

    try:
        path = mnist_data.ensure_mnist_npz(mnist, allow_network=not offline)
    except mnist_data.MNISTUnavailable as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1)
    (x_train, y_train), (x_test, y_test) = mnist_data.load_mnist(path)
    console.print(f"MNIST verified (SHA-256 of all four arrays): [bold]{path}[/bold]")
    console.print(f"  train {x_train.shape} {x_train.dtype}, first labels {y_train[:5].tolist()}")
    console.print(f"  test  {x_test.shape} {x_test.dtype}, first labels {y_test[:5].tolist()}")


@app.command()
def build(
    out: Path = typer.Option(Path("dist"), "--out", help="Where to leave <assignment>/autograder.zip and the student files."),
    update_assignments: bool = typer.Option(
        False, "--update-assignments",
        help="Also refresh what is committed from the build: assignments/ and examples/submissions/.",
    ),
) -> None:
    """Run Otter Assign on every master notebook in solutions/."""
    from autograder import build as builder

    built = builder.build_all(out)
    for b in built:
        console.print(f"[bold]{b.name}[/bold]: student notebook {b.student_notebook}, autograder {b.autograder_zip}")
    if update_assignments:
        from autograder import samples

        builder.sync_student_folders(built)
        console.print(f"Student folders refreshed in {builder.ASSIGNMENTS_DIR}")
        for b in built:
            written = samples.write_samples(b.student_notebook, b.solution_notebook)
            console.print(f"{len(written)} sample submissions written to {samples.SAMPLES_DIR}")


def main() -> None:
    app()
