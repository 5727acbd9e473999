"""The signed retraining cache: a result per canonical recipe, data description, option and framework version,
authenticated with an HMAC whose key only the grader can read (0600 in a 0700 folder), so neither a
submission nor another user can forge an entry.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path

from autograder.verifier.recipe import Settings
from autograder.faults import FaultError
from autograder.verifier.training import device_description, deterministic

VERIFIER_VERSION = 5  # 5: tf.data pipelines, validation_data; 4: the timed projection may refuse (never cached);
# 3: the dataset comes from the spec


def default_cache_dir() -> Path:
    from autograder.data import cache_dir

    return cache_dir() / "retrain"


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def _hmac_key(cache: Path) -> bytes:
    """The cache's signing key: 32 random bytes, readable only by the grader's user (0600 in 0700)."""
    key_file = cache / "hmac.key"
    try:
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
    except FileExistsError:
        pass
    st = key_file.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise FaultError.of("grader_crash", f"the retraining cache key {key_file} must belong to the grader and be "
                                            "private (0600)")
    return key_file.read_bytes()


def cache_key(recipe: dict, raw: bool, settings: Settings, seed: int) -> str:
    from importlib.metadata import version

    import keras

    backend = keras.backend.backend()
    payload = {
        "verifier": VERIFIER_VERSION, "recipe": recipe, "raw_pixels": raw, "settings": settings.key_fields(),
        "seed": seed, "data": settings.data(), "keras": keras.__version__, "backend": backend,
        "backend_version": version(backend), "device": device_description(), "deterministic": deterministic(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _read_entry(path: Path, key: bytes) -> dict | None:
    try:
        entry = json.loads(path.read_text())
        body = json.dumps(entry["result"], sort_keys=True).encode()
        if not hmac.compare_digest(hmac.new(key, body, "sha256").hexdigest(), entry["hmac"]):
            return None
        return entry["result"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_entry(path: Path, result: dict, key: bytes) -> None:
    body = json.dumps(result, sort_keys=True).encode()
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"hmac": hmac.new(key, body, "sha256").hexdigest(), "result": result}))
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
