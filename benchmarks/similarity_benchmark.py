"""The copied-code check (autograder.lms.similarity) on a synthetic class: time and memory.

    python benchmarks/similarity_benchmark.py            # 300 students
    python benchmarks/similarity_benchmark.py --n 500

The class (deterministic for ``--seed``): each student's four code answers (``conv2d``,
``max_pool2d``, the model, the training cell) are drawn, each on its own, from the six honest
styles of ``tests/similarity_class.py``; the training cell gets the student's own epochs, batch size
and learning rate, and every answer a comment line of its own.  Every tenth student is a planted
copy of an earlier one.  Students who drew the same style for an answer share that whole answer
(names do not count), so a generated class shares far more code than a real one: a heavy case for
the fingerprint index, with many pairs flagged beside the planted ones.

It writes the notebooks, then times :func:`autograder.lms.similarity.check_class` on them as a
batch calls it (reading every notebook through ``submission_files``), and prints the seconds, CPU
seconds, peak memory of the process, the pairs flagged, and whether every planted copy is among
them.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import sys
import tempfile
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT / "tests"))
from _measure import measured  # noqa: E402
from similarity_class import HONEST  # noqa: E402

KEYS = ("conv2d", "max_pool2d", "model", "training")


def _training(code: str, rng: random.Random) -> str:
    """The student's own numbers: epochs, batch size, learning rate."""
    code = re.sub(r"epochs=\d+", lambda m: f"epochs={rng.randint(3, 15)}", code)
    code = re.sub(r"batch_size=\d+", lambda m: f"batch_size={rng.choice([32, 64, 100, 128, 200, 256, 512])}", code)
    return re.sub(r"\b0\.00\d+\b|\b[0-9]e-\d\b", lambda m: f"{rng.choice([1, 2, 3, 5])}e-{rng.randint(3, 4)}", code)


def _comment(code: str, rng: random.Random) -> str:
    """A comment line of the student's own (the check ignores comments: only the text's size changes)."""
    lines = code.split("\n")
    at = rng.randrange(len(lines) + 1)
    indent = "    " if at and lines[at - 1].startswith("    ") else ""
    return "\n".join(lines[:at] + [f"{indent}# note {rng.randrange(10_000)}"] + lines[at:])


def _student(rng: random.Random) -> dict[str, str]:
    styles = list(HONEST)
    answer = {key: _comment(HONEST[rng.choice(styles)][key], rng) for key in KEYS}
    answer["training"] = _training(answer["training"], rng)
    return answer


def generate(n: int, seed: int = 0) -> tuple[dict[str, dict[str, str]], set[tuple[str, str]]]:
    """``n`` students' code answers, and the planted copies (pairs of ids)."""
    rng = random.Random(seed)
    students: dict[str, dict[str, str]] = {}
    planted = set()
    for i in range(n):
        sid = f"s{i:04d}"
        if i % 10 == 9:  # a copy of an earlier original, with comments of its own
            source = f"s{rng.randrange(i):04d}"
            while int(source[1:]) % 10 == 9:
                source = f"s{rng.randrange(i):04d}"
            students[sid] = {k: _comment(v, rng) for k, v in students[source].items()}
            planted.add((source, sid))
        else:
            students[sid] = _student(rng)
    return students, planted


def write_class(students: dict[str, dict[str, str]], folder: Path) -> list[dict]:
    """One notebook per student (the cnn_mnist student notebook, filled) and the batch's result rows."""
    from assignments.cnn_common.samples import Sample, fill
    from autograder import registry

    spec = registry.get("cnn_mnist")
    template = nbformat.read(spec.student_dir / "cnn_mnist.ipynb", as_version=4)
    results = []
    for sid, a in students.items():
        nb = fill(template, Sample(sid, "", functions={"conv2d": a["conv2d"], "max_pool2d": a["max_pool2d"]},
                                   model=a["model"], training=a["training"]), "synthetic")
        path = folder / f"{sid}.ipynb"
        nbformat.write(nb, path)
        results.append({"student": {"id": sid, "extra": {}}, "assignment": "cnn_mnist", "submission": str(path),
                        "status": "graded"})
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from autograder.lms import similarity

    students, planted = generate(args.n, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        results = write_class(students, Path(tmp))
        similarity.check_class(results[:2])  # imports (copydetect, pygments, scipy) out of the timing
        sink: dict = {}
        with measured("check_class", sink):
            found = similarity.check_class(results)
    m = sink["check_class"]
    flagged = {(p.a, p.b) for p in found.pairs}
    n_pairs = args.n * (args.n - 1) // 2
    print(f"load average {os.getloadavg()[0]:.1f}; {args.n} notebooks, {n_pairs:,} pairs of students")
    print(f"check_class: {m['seconds']:.1f} s (CPU {m['cpu_seconds']:.1f} s), peak {m['peak_mib']:.0f} MiB "
          f"(the whole process)")
    print(f"pairs flagged: {len(flagged)}; planted copies found: {len(planted & flagged)} of {len(planted)}")
    if found.error:
        print("error:", found.error)


if __name__ == "__main__":
    main()
