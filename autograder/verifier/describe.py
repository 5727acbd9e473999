"""What a retraining report says to people: the run that was scored, as it was trained.

The verifier (:mod:`autograder.verifier.retrain`) fills a ``RetrainReport`` with numbers; this module
writes the sentence the student reads of it, the same in the training check's message and on the
feedback page: the epochs the scored run actually trained (``EarlyStopping`` may stop it before the
epochs the recipe asks for), its batch size and optimizer, and, when several seeds were trained, each
seed's accuracy and epochs, so the median that counts can be checked against them.  It reads the
report as plain JSON (a result file's ``retrain``), so results written before a field existed still read.
"""

from __future__ import annotations


def _epochs(n: int) -> str:
    return f"{n} epoch{'' if n == 1 else 's'}"


def trained_epochs(done: int, requested: int) -> str:
    """"15 epochs", or "6 of the 15 requested epochs (EarlyStopping stopped it)"."""
    if requested and done < requested:
        return f"{done} of the {requested} requested epochs (EarlyStopping stopped it)"
    return _epochs(done)


def describe_run(report: dict) -> str:
    """How the scored accuracy was obtained, without the accuracy itself: "retrained from scratch: 12 of the
    15 requested epochs (EarlyStopping stopped it) at batch size 128, Adam (learning rate default), on CPU
    (tensorflow), 95 s", or with several seeds "retrained from scratch with 3 seeds at batch size 128, ...;
    the median counts: seed 1234: 0.9885 after 15 epochs; ..."."""
    requested = int(report.get("epochs_requested") or 0)
    accuracies = list(report.get("accuracies") or [])
    seeds = list(report.get("seeds") or [])
    seed_epochs = list(report.get("seed_epochs") or [])
    if report.get("preverified"):
        built = str((report["preverified"] or {}).get("built") or "")[:10] if isinstance(report["preverified"], dict) else ""
        how = "pre-verified when the assignment was built" + (f" ({built})" if built else "")
    elif report.get("cache_hit"):
        how = "from the retraining cache"
    else:
        how = f"{float(report.get('seconds') or 0):.0f} s"
    setting = (f"at batch size {report.get('batch_size')}, {report.get('optimizer') or 'its optimizer'}, "
               f"on {report.get('device') or 'the grader'} ({report.get('backend') or 'keras'}), {how}")
    if len(accuracies) < 2:
        return f"retrained from scratch: {trained_epochs(int(report.get('epochs') or 0), requested)} {setting}"
    runs = []
    for i, accuracy in enumerate(accuracies):
        seed = f"seed {seeds[i]}" if i < len(seeds) else f"seed {i + 1}"
        after = f" after {trained_epochs(int(seed_epochs[i]), requested)}" if i < len(seed_epochs) else ""
        runs.append(f"{seed}: {accuracy:.4f}{after}")
    return f"retrained from scratch with {len(accuracies)} seeds {setting}; the median counts: " + "; ".join(runs)
