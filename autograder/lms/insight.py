"""Class insight for the instructor: which named mistakes how many students made, per assignment.

Computed from the results alone (the misconception ids of each failed case, see
:func:`autograder.misconceptions.tag_misconceptions`), over the scored submissions of each assignment (a
second file of a student, a PDF, a grader error do not count).  One section per assignment: a
mixed batch's units have different questions and thresholds.  ``report.html`` shows it (with the
students behind each misconception: instructor only) and ``misconceptions.csv`` holds the same counts.
"""

from __future__ import annotations

from pathlib import Path


def _scored(r: dict) -> bool:
    return r["status"] != "grader_error" and bool(r.get("questions")) and \
        not (r["student"].get("extra") or {}).get("duplicate_of")


def misconception_ids(case: dict) -> list[str]:
    if case.get("passed"):
        return []
    ids = case.get("misconceptions")
    return list(ids) if isinstance(ids, list) else []


def section(assignment: str, results: list[dict]) -> dict:
    """One assignment's insight: per question, each misconception with its students, and each hidden
    check's failure rate; the retrained accuracies and the threshold."""
    from autograder.misconceptions import catalogue

    rows = [r for r in results if _scored(r)]
    titles = catalogue(assignment or None)
    questions: dict[str, dict] = {}
    for r in rows:
        sid = r["student"]["id"]
        for q in r.get("questions") or []:
            entry = questions.setdefault(q["name"], {"name": q["name"], "misconceptions": {}, "hidden": {}})
            for c in q.get("cases") or []:
                for mid in misconception_ids(c):
                    entry["misconceptions"].setdefault(mid, set()).add(sid)
                if c.get("hidden"):
                    seen = entry["hidden"].setdefault(c["name"], [0, 0])
                    seen[1] += 1
                    seen[0] += not c.get("passed")
    out_questions = []
    for q in questions.values():
        out_questions.append({
            "name": q["name"],
            "misconceptions": [{"id": mid, "title": titles.get(mid, mid), "count": len(ids), "students": sorted(ids)}
                               for mid, ids in sorted(q["misconceptions"].items(), key=lambda kv: (-len(kv[1]), kv[0]))],
            "hidden": [{"case": name, "failed": f, "total": n, "rate": (f / n if n else 0.0)}
                       for name, (f, n) in q["hidden"].items()],
        })
    accuracies = [r["retrain"]["accuracy"] for r in rows
                  if r.get("retrain") and r["retrain"].get("accuracy") is not None]
    threshold = None
    try:
        from autograder import registry

        threshold = registry.get(assignment).training.threshold if assignment else None
    except LookupError:
        pass
    return {"assignment": assignment or "unknown assignment", "n_scored": len(rows), "questions": out_questions,
            "accuracies": accuracies, "threshold": threshold,
            "below_threshold": sum(a <= threshold for a in accuracies) if threshold is not None else None}


def sections(results: list[dict]) -> list[dict]:
    names = sorted({r.get("assignment") or "" for r in results})
    return [section(name, [r for r in results if (r.get("assignment") or "") == name]) for name in names if name]


def write_misconceptions_csv(insight: list[dict], path: Path) -> None:
    """One row per assignment, question and misconception: how many of the scored students, and who."""
    from autograder.lms.sheets import SafeCsvWriter, private_writer

    with private_writer(path) as f:
        w = SafeCsvWriter(f)
        w.writerow(["assignment", "question", "misconception", "title", "students", "of_scored", "ids"])
        for s in insight:
            for q in s["questions"]:
                for m in q["misconceptions"]:
                    w.writerow([s["assignment"], q["name"], m["id"], m["title"], m["count"], s["n_scored"],
                                ";".join(m["students"])])
