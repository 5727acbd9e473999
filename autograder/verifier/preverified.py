"""Pre-verified verdicts: what ``build`` measured by retraining a recipe, shipped signed in the autograder zips,
so that a submission with the very same recipe is not retrained again.

**What a verdict is.** ``build`` grades the solution notebook (and the recipes the instructor lists, see
:mod:`autograder.preverify`) exactly as grading does, and keeps, per recipe, the accuracies of the seeds the seed
rule trained, with what decides them: the *recipe digest* (the canonical recipe, its plan of fit calls and the
pixel scale, as :func:`autograder.verifier.recipe.prepare` computes them on the trusted side) and the *context*
(the verifier's version, the dataset's description with the SHA-256 of every array, the settings that decide the
seed rule, the threshold and the budget, Keras, its backend and their versions, the determinism setting).  The
device it trained on and the build's date are recorded for people, not matched: a pre-verified verdict exists so
that a slow host need not train what a build already trained.

**When it is served.** :func:`autograder.verifier.retrain.verify` prepares every submission's recipe as usual
(budget, build check, data notes) and asks :meth:`Verdicts.lookup` before training any seed.  Only a verdict
whose recipe digest and whole context equal the submission's is served; every other recipe is retrained as if
there were no verdicts.  The lookup key is computed here from the canonical recipe alone, never read from the
notebook, so nothing a notebook claims (names, printed accuracies, metadata) can select a verdict.

**Why it is signed, and how.** The verdicts travel in the zips (``preverified.json``, with the public key in
``preverified.pub``) to machines that trust nothing but the zip: Gradescope's container, a TA's batch.  The file is
signed with Ed25519 (the ``cryptography`` package).  The private key never leaves the instructor's cache folder
(``<cache>/preverify/ed25519.key``, 0600 in a 0700 folder, created on the first build and kept for the next ones);
the zip carries only the public key, which can check a signature but never make one.  An HMAC would have had to
ship its secret in the zip to be checked there, so anyone holding a zip could have written verdicts for it.  The
signed payload names the assignment and a digest of the zip's grading contents (its tests, the student-side
check module and the per-student variants), so a verdict file moved into another assignment's or another
build's zip does not verify either.  Submissions cannot write the zip or its unpacked folder (the jail masks
both), and whoever can rewrite the zip could change its tests anyway: the zip is the root of trust, the signature
makes sure the verdicts are exactly what the build wrote, for exactly these tests.

**What is never served**: a file that is truncated, not JSON, signed by another key or not signed, made for
another zip, or a verdict whose recipe or context differs (another dataset, verifier version, seed rule,
threshold, budget, Keras version or backend).  Each such case says why in the grader's log (standard error: the
batch's ``logs/grader.log``, Gradescope's autograder output) and the submission is retrained normally.  The time
and memory safety nets (``max_seconds``, ``memory_mb``) are not part of the match, as in the retraining cache:
they protect the host that trains, and a served verdict trains nothing.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from autograder.verifier.signed_cache import VERIFIER_VERSION, _private_dir
from autograder.verifier.training import deterministic

if TYPE_CHECKING:
    from autograder.verifier.recipe import Settings
    from autograder.verifier.retrain import RetrainReport

#: The verdict file and the public key that checks it, at the top of both autograder zips.
VERDICTS_FILE = "preverified.json"
PUBLIC_KEY_FILE = "preverified.pub"
FORMAT = "cnn-autograder pre-verified verdicts"
FORMAT_VERSION = 1
MAX_FILE_BYTES = 4 << 20  # a verdict file is a few kilobytes; anything larger is not read

#: The parts of a verdict's context, as the grader's log names them when one differs.
CONTEXT_NAMES = {
    "verifier": "verifier version", "data": "dataset (its description and the SHA-256 of its arrays)",
    "settings": "training settings (seed rule, threshold, budget)", "keras": "Keras version",
    "backend": "Keras backend", "backend_version": "backend version", "deterministic": "determinism setting",
}


class VerdictError(Exception):
    """The build could not sign verdicts (its key is missing the right owner or mode, or unreadable)."""


def _log(message: str) -> None:
    """A line for the grader's log (standard error: the batch's log file, Gradescope's autograder output)."""
    print(f"pre-verified verdicts: {message}", file=sys.stderr, flush=True)


def _plain(value):
    """JSON's view of a value (tuples as lists, keys sorted), so a signed context and a computed one compare."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


# --- what a verdict is matched on ---------------------------------------------------------------

def recipe_digest(recipe: dict, raw: bool) -> str:
    """The canonical recipe with its plan (``{**recipe, "fits": plan}``) and the pixel scale, as one digest."""
    body = json.dumps({"recipe": recipe, "raw_pixels": bool(raw)}, sort_keys=True, default=str)
    return hashlib.sha256(body.encode()).hexdigest()


def context(settings: "Settings") -> dict:
    """Everything besides the recipe that decides a verdict (see :data:`CONTEXT_NAMES`), as plain JSON."""
    from importlib.metadata import version

    import keras

    backend = keras.backend.backend()
    return _plain({"verifier": VERIFIER_VERSION, "data": settings.data(), "settings": settings.key_fields(),
                   "keras": keras.__version__, "backend": backend, "backend_version": version(backend),
                   "deterministic": deterministic()})


def autograder_digest(name: str, tests: dict[str, str], public_module: str, variants: dict | None) -> str:
    """The zip's grading contents that a verdict file is bound to (the same from a zip and from its unpacked
    folder): the assignment's name, its test files, its student-side check module, its variants."""
    body = json.dumps({"assignment": name, "tests": tests, "public_module": public_module, "variants": variants},
                      sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


# --- serving ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Served:
    """One verdict, matched: the seeds' accuracies as the build measured them."""

    name: str  # which of the build's recipes: "solution", "lesson_recipe", a notebook's name
    accuracies: tuple[float, ...]
    seeds: tuple[int, ...]
    epochs: int  # the epochs the scored run trained
    device: str
    backend: str
    peak_mb: int
    built: str  # when the assignment was built (UTC, ISO 8601)
    seed_epochs: tuple[int, ...] = ()  # the epochs each seed trained (EarlyStopping); empty: each trained ``epochs``

    def apply(self, report: "RetrainReport") -> list[dict]:
        """Fill ``report`` with what the build trained (seeds, device, ``preverified``); the runs, as
        :func:`autograder.verifier.retrain.verify` sums them (nothing trained here: no seconds)."""
        report.seeds = list(self.seeds)
        report.device, report.backend = self.device, self.backend
        report.preverified = {"recipe": self.name, "built": self.built, "device": self.device,
                              "backend": self.backend, "accuracies": list(self.accuracies), "seeds": list(self.seeds)}
        epochs = self.seed_epochs if len(self.seed_epochs) == len(self.accuracies) else [self.epochs] * len(self.accuracies)
        return [{"accuracy": a, "epochs": e, "seconds": 0.0, "cache_hit": False, "peak_mb": self.peak_mb}
                for a, e in zip(self.accuracies, epochs)]


def _served(entry: dict, built: str) -> Served | None:
    """A signed entry's outcome, checked for shape (a verdict that is not well formed is not served)."""
    try:
        acc = tuple(float(a) for a in entry["accuracies"])
        seeds = tuple(int(s) for s in entry["seeds"])
        served = Served(str(entry["name"])[:200], acc, seeds, int(entry["epochs"]), str(entry["device"])[:200],
                        str(entry["backend"])[:50], int(entry.get("peak_mb") or 0), built,
                        tuple(int(e) for e in entry.get("seed_epochs") or ()))
    except (KeyError, TypeError, ValueError):
        return None
    if not acc or len(acc) != len(seeds) or not all(math.isfinite(a) and 0.0 <= a <= 1.0 for a in acc):
        return None
    return served


@dataclass
class Verdicts:
    """The verdicts a zip ships, once their signature and binding are checked (``problem``: why none can be served)."""

    entries: list[dict] = field(default_factory=list)
    built: str = ""
    problem: str | None = None
    where: str = VERDICTS_FILE
    _said: bool = False

    def lookup(self, recipe: dict, raw: bool, settings: "Settings") -> Served | None:
        """The verdict for this canonical recipe in this context, else None (the grader's log says why a
        verdict that exists for the recipe is not served)."""
        if self.problem is not None:
            if not self._said:
                _log(f"none served from {self.where}: {self.problem}; every recipe is retrained")
                self._said = True
            return None
        digest = recipe_digest(recipe, raw)
        candidates = [e for e in self.entries if isinstance(e, dict) and e.get("recipe") == digest]
        if not candidates:
            return None
        here = context(settings)
        for entry in candidates:
            theirs = entry.get("context") if isinstance(entry.get("context"), dict) else {}
            differ = [k for k in CONTEXT_NAMES if theirs.get(k) != here.get(k)] + sorted(set(theirs) - set(CONTEXT_NAMES))
            if differ:
                _log(f"the verdict for recipe {str(entry.get('name'))[:200]!r} is not served: made with another "
                     + ", another ".join(CONTEXT_NAMES.get(k, k) for k in differ) + "; retraining")
                continue
            served = _served(entry, self.built)
            if served is None:
                _log(f"the verdict for recipe {str(entry.get('name'))[:200]!r} is not well formed; retraining")
                continue
            return served
        return None


class Recorder:
    """What the build passes instead of verdicts: it notes each recipe's digest and context and serves nothing,
    so the recipe is trained as grading would train it."""

    def __init__(self):
        self.seen: list[tuple[str, dict]] = []

    def lookup(self, recipe: dict, raw: bool, settings: "Settings") -> None:
        self.seen.append((recipe_digest(recipe, raw), context(settings)))
        return None


def load(read: Callable[[str], bytes | None], digest: str, where: str = VERDICTS_FILE) -> Verdicts | None:
    """The verdicts beside a zip's tests (``read(name)``: the file's bytes, None when absent), or None when the
    zip ships none.  Whatever does not verify leaves a :class:`Verdicts` that serves nothing and says why."""
    try:
        raw = read(VERDICTS_FILE)
    except Exception as exc:  # noqa: BLE001 - OSError, a zip member that fails its CRC, ...: nothing is served
        return Verdicts(problem=f"the file could not be read ({type(exc).__name__})", where=where)
    if raw is None:
        return None
    try:
        public = read(PUBLIC_KEY_FILE)
    except Exception as exc:  # noqa: BLE001 - as above
        return Verdicts(problem=f"the public key could not be read ({type(exc).__name__})", where=where)
    return _verified(raw, public, digest, where)


def _verified(raw: bytes, public_pem: bytes | None, digest: str, where: str) -> Verdicts:
    def refused(why: str) -> Verdicts:
        return Verdicts(problem=why, where=where)

    if len(raw) > MAX_FILE_BYTES:
        return refused(f"the file is larger than {MAX_FILE_BYTES >> 20} MB")
    if not public_pem:
        return refused(f"the zip has no public key ({PUBLIC_KEY_FILE})")
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
        from cryptography.hazmat.primitives.serialization import load_pem_public_key
    except ImportError:
        return refused("the cryptography package is not installed, so no signature can be checked")
    try:
        envelope = json.loads(raw)
        payload, signature = envelope["payload"], base64.b64decode(envelope["signature"], validate=True)
        if envelope.get("format") != FORMAT or not isinstance(payload, str):
            return refused("the file is not a verdict file")
    except (ValueError, KeyError, TypeError, RecursionError):
        return refused("the file is not a complete verdict file (truncated or not JSON)")
    try:
        key = load_pem_public_key(public_pem)
        if not isinstance(key, Ed25519PublicKey):
            return refused(f"the public key ({PUBLIC_KEY_FILE}) is not an Ed25519 key")
        key.verify(signature, payload.encode())
    except InvalidSignature:
        return refused(f"the signature does not verify with the zip's public key ({PUBLIC_KEY_FILE}): the file was "
                       "changed after the build, or signed with another key")
    except (ValueError, TypeError) as exc:
        return refused(f"the public key ({PUBLIC_KEY_FILE}) could not be read ({type(exc).__name__})")
    try:
        body = json.loads(payload)
        if body.get("version") != FORMAT_VERSION:
            return refused(f"format version {body.get('version')!r}, this grader reads {FORMAT_VERSION}")
        if body.get("autograder") != digest:
            return refused(f"made for another build of the assignment (or another assignment: "
                           f"{str(body.get('assignment'))[:100]!r}): the zip's tests or check module differ")
        entries = body["verdicts"]
        if not isinstance(entries, list):
            raise TypeError
        return Verdicts(entries, str(body.get("built", ""))[:40], where=where)
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return refused("the signed payload is not well formed")


# --- building -----------------------------------------------------------------------------------

def entry(name: str, recipe: str, ctx: dict, report: dict) -> dict:
    """One verdict from the build's retrain report (``RetrainReport.as_dict()`` with an accuracy)."""
    return {"name": name, "recipe": recipe, "context": ctx, "accuracies": [float(a) for a in report["accuracies"]],
            "seeds": [int(s) for s in report["seeds"]], "epochs": int(report["epochs"]),
            "seed_epochs": [int(e) for e in report.get("seed_epochs") or ()],
            "device": str(report["device"]), "backend": str(report["backend"]), "peak_mb": int(report.get("peak_mb") or 0)}


def signing_key(folder: Path | None = None):
    """The build's Ed25519 private key, made on first use: ``<cache>/preverify/ed25519.key``, 0600 in 0700."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if folder is None:
        from autograder.data import cache_dir

        folder = cache_dir() / "preverify"
    folder = _private_dir(Path(folder))
    path = folder / "ed25519.key"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(Ed25519PrivateKey.generate().private_bytes_raw())
    except FileExistsError:
        pass
    st = path.lstat()
    if not path.is_file() or path.is_symlink() or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise VerdictError(f"the signing key {path} must be a file that belongs to you and is private (0600)")
    try:
        return Ed25519PrivateKey.from_private_bytes(path.read_bytes())
    except ValueError as exc:
        raise VerdictError(f"the signing key {path} is not an Ed25519 key: {exc}") from None


def sign(entries: list[dict], assignment: str, digest: str, key) -> tuple[str, str]:
    """The verdict file and the public key file, as text, for the zips."""
    from autograder import __version__
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    payload = json.dumps({"version": FORMAT_VERSION, "assignment": assignment, "autograder": digest,
                          "built": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                          "grader": __version__, "verdicts": entries}, sort_keys=True, indent=1)
    envelope = {"format": FORMAT, "payload": payload,
                "signature": base64.b64encode(key.sign(payload.encode())).decode()}
    public = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
    return json.dumps(envelope, indent=1) + "\n", public
