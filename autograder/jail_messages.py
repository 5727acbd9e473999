"""What a jail sends, decoded and checked: every value the probe runtime extracted arrives as untrusted
plain data on its status pipe and is checked here, field by field with hard caps, before anything of the
grader reads it.  The sandbox (:mod:`autograder.probe.sandbox`) checks each value as it arrives; the judge
(:mod:`autograder.judge.judge`) decodes arrays and bounds messages again with the same functions, without
importing anything of the jail's side.  The caps themselves are the protocol's (:mod:`autograder.protocol`).
"""

from __future__ import annotations

import base64
import io
import json

from autograder import protocol
# A value's fields, as the runtime itself bounds them: one definition, in autograder.protocol
from autograder.protocol import (MAX_ARRAY_ELEMENTS, MAX_ERROR_CHARS, MAX_FIT_CHARS, MAX_FITS,  # noqa: F401
                                 MAX_JSON_CHARS, MAX_JSON_DEPTH, MAX_JSON_LIST, MAX_JSON_STRING, MAX_NPY_CHARS)
from autograder.verifier.budget import Budget

FIT_FIELDS = {"epochs", "batch_size", "initial_epoch", "validation_split", "has_validation_data", "validation_data",
              "validation_freq", "shuffle", "class_weight", "sample_weight", "steps_per_epoch", "callbacks", "x", "y", "compile_config",
              "extra_kwargs"}


def clean_text(text, limit: int = MAX_ERROR_CHARS) -> str:
    """An untrusted string made safe to store and print: at most ``limit`` characters, valid UTF-8
    (a lone surrogate, which JSON can carry but no UTF-8 file can hold, becomes "?")."""
    text = str(text)[:limit]
    return text.encode("utf-8", "replace").decode("utf-8")


def _plain_ok(value, depth: int = 0) -> bool:
    """Whether ``value`` is what the runtime's ``plain`` can produce (same depth, list and string caps)."""
    if depth > MAX_JSON_DEPTH:
        return False
    if value is None or isinstance(value, (bool, int, float)):
        return True
    if isinstance(value, str):
        return len(value) <= MAX_JSON_STRING
    if isinstance(value, list):
        return len(value) <= MAX_JSON_LIST and all(_plain_ok(v, depth + 1) for v in value)
    return False


def _clean_strings(value):
    """Every string of plain data made valid UTF-8 (the structure was checked before)."""
    if isinstance(value, str):
        return clean_text(value, MAX_JSON_STRING)
    if isinstance(value, list):
        return [_clean_strings(v) for v in value]
    if isinstance(value, dict):
        return {clean_text(k, 200): _clean_strings(v) for k, v in value.items()}
    return value


def _npy_ok(b64) -> bool:
    return isinstance(b64, str) and 0 < len(b64) <= MAX_NPY_CHARS and b64.isascii()


def checked_value(data, n_outputs: int | None) -> dict:
    """The structure of one extracted value, checked field by field with hard caps.

    Anything the runtime would never send (student code can write to the status pipe) becomes
    an ``error`` value with a short reason, never an oversized or malformed record."""
    def bad(why: str) -> dict:
        return {"status": protocol.ERROR, "message": f"the sandbox sent an invalid value ({why})"}

    if not isinstance(data, dict):
        return bad("not a record")
    status = data.get("status")
    if status in (protocol.MISSING, protocol.UNANSWERED):
        return {"status": status}
    if status == protocol.ERROR:
        return {"status": protocol.ERROR, "message": clean_text(data.get("message", ""))}
    if status == protocol.JSON:
        if "value" not in data or not _plain_ok(data["value"]):
            return bad("not plain data within the limits")
        if len(json.dumps(data["value"])) > MAX_JSON_CHARS:
            return bad("too large")
        return {"status": protocol.JSON, "value": _clean_strings(data["value"])}
    if status == protocol.ARRAY:
        return {"status": protocol.ARRAY, "npy": data["npy"]} if _npy_ok(data.get("npy")) else bad("array too large")
    if status == protocol.FUNCTION:
        outputs = data.get("outputs")
        if not isinstance(outputs, list) or n_outputs is None or len(outputs) != n_outputs:
            return bad("not one output per planned call")
        kept = []
        for out in outputs:
            if isinstance(out, dict) and out.get("status") == protocol.OK and _npy_ok(out.get("npy")):
                kept.append({"status": protocol.OK, "npy": out["npy"]})
            elif isinstance(out, dict) and out.get("status") == protocol.ERROR:
                kept.append({"status": protocol.ERROR, "message": clean_text(out.get("message", ""))})
            else:
                return bad("a malformed function output")
        return {"status": protocol.FUNCTION, "outputs": kept}
    if status == protocol.MODEL:
        config, fits = data.get("config"), data.get("fits")
        if not isinstance(config, str) or len(config) > Budget().max_config_chars:
            return bad(f"model config missing or over {Budget().max_config_chars:,} characters")
        if not isinstance(fits, list) or len(fits) > MAX_FITS:
            return bad(f"more than {MAX_FITS} fit records")
        for fit in fits:
            if not isinstance(fit, dict) or not set(fit) <= FIT_FIELDS or len(json.dumps(fit)) > MAX_FIT_CHARS:
                return bad("a malformed fit record")
        return {"status": protocol.MODEL, "config": clean_text(config, Budget().max_config_chars),
                "fits": [_clean_strings(f) for f in fits]}
    return bad("unknown status")


def decode_npy(b64: str, max_elements: int = MAX_ARRAY_ELEMENTS):
    """Untrusted ``.npy`` bytes to an array: no pickle, numeric dtypes only, size capped."""
    import numpy as np

    raw = base64.b64decode(b64, validate=True)
    arr = np.load(io.BytesIO(raw), allow_pickle=False)
    if arr.dtype.kind not in "biuf" or arr.size > max_elements:
        raise ValueError(f"refusing array of dtype {arr.dtype} and size {arr.size}")
    return arr
