"""``tf.data`` pipelines: the recorded structure reduced to validated numbers, and rebuilt on the assignment's data.

The fit recorder (:func:`autograder.probe.runtime._describe_pipeline`) describes a dataset passed to
``model.fit`` as a list of steps, source first: the ``from_tensor_slices`` arrays (dtype, range,
fingerprint), ``map`` functions measured as a scaling ``a * x + b`` per component (only when their
graph holds casts, constant arithmetic and reshapes), ``shuffle``, ``batch``, ``repeat``, ``take``,
``prefetch`` and ``cache``.  :func:`canonical_pipeline` turns that untrusted description into a
plain spec or refuses it; :func:`build_dataset` rebuilds the same pipeline, with TensorFlow's own
ops and the grader's data, in the retraining process.  Nothing the student wrote is run here.
"""

from __future__ import annotations

import json
import math
from typing import Any



class RefusedModel(ValueError):
    """A pipeline the grader cannot replay (:mod:`autograder.verifier.rebuild` re-raises it as its own
    ``RefusedModel``; this module imports nothing of the verifier, so the rules ship to students without a cycle)."""

SUPPORTED_FORM = (
    "tf.data.Dataset.from_tensor_slices((train_images, train_labels))"
    ".map(lambda x, y: (tf.cast(x, tf.float32) / 255.0, y)).shuffle(10000).batch(128).prefetch(tf.data.AUTOTUNE)"
)
HELP = f"; the grader replays pipelines of this form: {SUPPORTED_FORM} (or pass the arrays: model.fit(train_images, " \
       "train_labels, batch_size=128))"
IGNORED = {"prefetch", "cache", "options"}  # change when and where elements are made, never their values or order


def _int(value: Any, lo: int, hi: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise RefusedModel(f"{what}={json.dumps(value, default=str)[:40]} is not an integer from {lo} to {hi}")
    return value


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or abs(value) > 1e6:
        raise RefusedModel(f"{what} is not a plain number")
    return float(value)


def canonical_pipeline(desc: Any, where: str, notes: list[str]) -> dict:
    """``{"source": <image array description>, "ops": [...], "batch_size": n, "take_batches": k | None,
    "endless": bool}`` from the recorder's description, or :class:`RefusedModel` saying what to write instead."""
    if not isinstance(desc, dict) or not isinstance(desc.get("ops"), list) or desc.get("error"):
        raise RefusedModel(f"{where}: the tf.data pipeline could not be read ({str(desc.get('error', ''))[:120]})"
                           + HELP if isinstance(desc, dict) else f"{where}: the tf.data pipeline could not be read" + HELP)
    steps = desc["ops"][:50]
    if not steps or not isinstance(steps[0], dict) or steps[0].get("op") != "source":
        first = steps[0] if steps and isinstance(steps[0], dict) else {}
        what = str(first.get("name") or first.get("op") or "unknown")[:60]
        if "FlatMap" in what or "Generator" in what:
            what = "a Python generator (from_generator) or flat_map"
        raise RefusedModel(f"{where}: the tf.data pipeline starts from {what}, which the grader cannot rebuild "
                           "(it replays datasets made with from_tensor_slices from the assignment's arrays, never "
                           "generators, files or Python functions)" + HELP)
    components = steps[0].get("components")
    if steps[0].get("structure") != "tuple" or not isinstance(components, list) or len(components) != 2 \
            or not all(isinstance(c, dict) and c.get("kind") == "array" for c in components):
        raise RefusedModel(f"{where}: the tf.data pipeline must be made from a pair of arrays, "
                           "from_tensor_slices((images, labels))" + HELP)
    ops, batch, take_batches, endless, seeded, repeated = [], None, None, False, False, False
    for step in steps[1:]:
        op = step.get("op") if isinstance(step, dict) else None
        if op in IGNORED:
            continue
        if op == "map":
            if step.get("unsupported") or not isinstance(step.get("affine"), list) or len(step["affine"]) != 2:
                reason = str(step.get("unsupported") or "it does not return (images, labels)")[:120]
                raise RefusedModel(f"{where}: a map in the tf.data pipeline cannot be replayed ({reason}); only casts "
                                   "and scalings by constants are, e.g. .map(lambda x, y: (tf.cast(x, tf.float32) / "
                                   "255.0, y)); put any other preprocessing in the model as Keras layers (Rescaling, "
                                   "RandomRotation, ...)" + HELP)
            (a, b), (la, lb) = [[_number(v, f"{where}: a map's scaling") for v in pair[:2]] for pair in step["affine"]]
            if (la, lb) != (1.0, 0.0):
                raise RefusedModel(f"{where}: a map in the tf.data pipeline changes the labels; only the images may be "
                                   "scaled" + HELP)
            dtypes = step.get("dtypes") or []
            if not dtypes or dtypes[0] not in ("float32", "float64") and (a, b) != (1.0, 0.0):
                raise RefusedModel(f"{where}: a map in the tf.data pipeline makes {str(dtypes[:1])[:30]} images; "
                                   "cast them to tf.float32" + HELP)
            if a == 0.0:
                raise RefusedModel(f"{where}: a map in the tf.data pipeline multiplies the images by 0")
            if (a, b) != (1.0, 0.0):
                ops.append({"op": "map", "scale": a, "offset": b})
        elif op == "shuffle":
            if repeated:  # its buffer would fill across epochs: as much memory as it names, before the first step
                raise RefusedModel(f"{where}: the tf.data pipeline shuffles after .repeat(); shuffle first, e.g. "
                                   ".shuffle(10000).batch(128).repeat()" + HELP)
            seeded = seeded or bool(step.get("seeded"))
            ops.append({"op": "shuffle", "buffer": _int(step.get("buffer"), 1, 10_000_000, f"{where}: shuffle buffer"),
                        "reshuffle": step.get("reshuffle") is not False})
        elif op == "batch":
            if batch is not None:
                raise RefusedModel(f"{where}: the tf.data pipeline batches twice" + HELP)
            batch = _int(step.get("size"), 1, 10_000_000, f"{where}: batch size")
            ops.append({"op": "batch", "size": batch, "drop_remainder": step.get("drop_remainder") is True})
        elif op == "repeat":
            count = _int(step.get("count"), -1, 10_000, f"{where}: repeat count")
            repeated = repeated or count != 1
            if count == -1:
                endless = True
                ops.append({"op": "repeat"})
            elif count != 1:
                raise RefusedModel(f"{where}: .repeat({count}) makes one epoch {count} passes over the data; write "
                                   f"epochs={count} times as many in model.fit and leave out repeat")
        elif op == "take":
            count = _int(step.get("count"), -1, 10_000_000, f"{where}: take count")
            if count != -1:
                if endless:
                    endless = False
                ops.append({"op": "take", "count": count})
                if batch is not None:
                    take_batches = count if take_batches is None else min(take_batches, count)
        else:
            name = str(step.get("name") or op)[:60] if isinstance(step, dict) else "?"
            raise RefusedModel(f"{where}: the tf.data pipeline uses {name}, which the grader cannot replay" + HELP)
    if batch is None:
        raise RefusedModel(f"{where}: the tf.data pipeline is not batched; add .batch(batch_size)" + HELP)
    if seeded:
        notes.append(f"{where}: the tf.data shuffle follows the grader's seed (a seed the notebook set, for the shuffle "
                     "or with tf.random.set_seed, is not replayed)")
    return {"source": components[0], "labels": components[1], "ops": ops, "batch_size": batch,
            "take_batches": take_batches, "endless": endless}


def image_transform(spec: dict | None) -> list[list[float]]:
    """The scalings the pipeline applies to the images, in order (``[[a, b], ...]``); ``[]`` for arrays."""
    return [[op["scale"], op["offset"]] for op in (spec or {}).get("ops", []) if op["op"] == "map"]


def describe_scaling(a: float, b: float = 0.0) -> str:
    """A measured scaling ``a * x + b`` in the words of the notebook's expression: "divided by 255",
    "divided by 127.5, then minus 1", "multiplied by 2" (never ``x * 0.00392157``)."""
    parts = []
    if a != 1.0:
        inverse = 1.0 / a
        divisor = round(inverse, 2)
        parts.append(f"divided by {divisor:g}" if abs(a) < 1 and abs(inverse - divisor) <= 1e-4 * abs(inverse)
                     else f"multiplied by {a:.6g}")
    if b:
        parts.append(f"{'plus' if b > 0 else 'minus'} {abs(b):.6g}")
    return ", then ".join(parts) or "unchanged"


def _scale(x, a: float, b: float):
    import tensorflow as tf

    x = tf.cast(x, tf.float32)
    inverse = 1.0 / a
    if abs(inverse - round(inverse)) < 1e-3 * abs(inverse):  # x / 255 as the notebook wrote it (same rounding)
        x = x / tf.constant(float(round(inverse)), tf.float32)
    else:
        x = x * tf.constant(a, tf.float32)
    return x + tf.constant(b, tf.float32) if b else x


def transform_images(x, transform: list[list[float]]):
    """Apply the pipeline's image scalings to an array (the test images, so the model sees what it trained on)."""
    if not transform:
        return x
    import tensorflow as tf

    t = tf.constant(x)
    for a, b in transform:
        t = _scale(t, a, b)
    return t.numpy()


def build_dataset(spec: dict, x, y):
    """The pipeline rebuilt from trusted values on the grader's arrays ``x`` (source scale) and labels ``y``."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y))
    for op in spec["ops"]:
        if op["op"] == "map":
            ds = ds.map(lambda img, label, a=op["scale"], b=op["offset"]: (_scale(img, a, b), label))
        elif op["op"] == "shuffle":
            ds = ds.shuffle(op["buffer"], reshuffle_each_iteration=op["reshuffle"])
        elif op["op"] == "batch":
            ds = ds.batch(op["size"], drop_remainder=op["drop_remainder"])
        elif op["op"] == "repeat":
            ds = ds.repeat()
        elif op["op"] == "take":
            ds = ds.take(op["count"])
    return ds.prefetch(tf.data.AUTOTUNE)
