"""Runs INSIDE the sandbox, in the child process that executes a submission (untrusted side).

Copied into the jail and started by :mod:`autograder.probe.sandbox` as
``python -I probe_runtime.py SETUP.json STATUS_FD``; it imports what notebooks need, says ``ready``
and then reads its one submission (cells, names to extract, function probes) from stdin: a warm
jail started ahead of its submission waits there.
It executes the notebook's code cells with IPython (magics and all), records ``Model.fit``
calls instead of running them (unless the job asks for real training), and finally extracts
each graded variable as plain data: JSON numbers/strings/lists, numpy arrays as ``.npy``
bytes (never pickle), the Keras model as its JSON config plus the recorded fit settings, and
the outputs of student functions on inputs the grader chose.

Everything goes back to the parent as JSON lines on the status pipe; the parent treats all
of it as untrusted data.  This file imports nothing from :mod:`autograder` inside the jail: the
message kinds, value statuses and caps come from :mod:`autograder.protocol`, copied beside it.
"""

import base64
import io
import json
import math
import os
import signal
import sys
import time



def _protocol():
    """:mod:`autograder.protocol`: the copy beside this file in the jail (loaded before any student code
    runs), or the package's own where the grader imports this module (tests)."""
    import importlib.util

    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "autograder_protocol.py")
    if os.path.isfile(here):
        spec = importlib.util.spec_from_file_location("autograder_protocol", here)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    from autograder import protocol

    return protocol


P = _protocol()
STATUS = None
GO = None  # the grader's go-ahead between cells (a pipe; None when the grader sends none)
MAX_ARRAY_ELEMENTS = P.MAX_ARRAY_ELEMENTS
MAX_JSON_CHARS = P.MAX_JSON_CHARS
FIT_LOG = []  # list of (id(model), record)


def send(kind, **payload):
    payload["kind"] = kind
    line = json.dumps(payload, default=str) + "\n"
    os.write(STATUS, line.encode())


def wait_for_go():
    """Block until the grader has looked at the finished cell (its processes, its memory), so
    what a cell leaves behind is never blamed on a later one.  End of file: the grader is gone."""
    if GO is None:
        return
    try:
        if not os.read(GO, 1):
            os._exit(0)
    except OSError:  # the notebook closed or replaced the descriptor: its own attribution only
        pass


def npy_b64(arr):
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return base64.b64encode(buf.getvalue()).decode()


# --- training is recorded, not run ----------------------------------------------------------

def _describe_data(x):
    """Shape, scale and a fingerprint of the fit data (which pixels of the first three images are
    non-zero: the grader compares it with the training and test sets'; see retrain.fingerprint)."""
    try:
        import hashlib

        import numpy as np

        if hasattr(x, "shape") and hasattr(x, "dtype"):
            sample = np.asarray(x[:256], dtype="float64")
            info = {"kind": "array", "shape": [int(n) for n in x.shape], "dtype": str(x.dtype),
                    "min": float(sample.min()), "max": float(sample.max()), "mean": float(sample.mean())}
            if len(sample) >= 3:
                rows = sample[:3].reshape(3, -1)
                info["fingerprint"] = hashlib.sha256(np.packbits(rows > 0).tobytes()).hexdigest()[:16]
            return info
        if _is_dataset(x):
            return _describe_pipeline(x)
    except Exception as exc:  # noqa: BLE001 - described as unreadable; the grader refuses it
        if _is_dataset(x):
            return {"kind": "dataset", "error": f"{type(exc).__name__}: {str(exc)[:200]}"}
    if isinstance(x, (tuple, list)) and len(x) in (2, 3):  # validation_data=(images, labels[, weights])
        return {"kind": "tuple", "items": [_describe_data(v) for v in x[:3]]}
    return {"kind": type(x).__name__}


def _is_dataset(x):
    try:
        import tensorflow as tf

        return isinstance(x, tf.data.Dataset)
    except Exception:  # noqa: BLE001
        return False


MAP_OPS = {"Placeholder", "Identity", "Const", "Cast", "Mul", "RealDiv", "Div", "AddV2", "Add", "Sub", "NoOp",
           "ExpandDims", "Reshape", "Squeeze"}


def _describe_map(ds):
    """A ``map``'s function as an affine scaling per component (``a * x + b`` and the output dtype), measured by
    calling it on constant inputs; only when its graph holds nothing but casts, constant arithmetic and
    reshapes (anything else is described as unsupported: the grader refuses it)."""
    import numpy as np
    import tensorflow as tf

    fn = ds._map_func.function
    ops = sorted({o.type for o in fn.graph.get_operations()})
    bad = [o for o in ops if o not in MAP_OPS]
    if bad:
        return {"op": "map", "unsupported": f"its function runs {', '.join(bad[:5])}"}
    specs = tf.nest.flatten(ds._input_dataset.element_spec)
    outs_at = {}
    for v in (0.0, 1.0, 2.0, 200.0):
        args = [tf.cast(tf.fill([d if d is not None else 1 for d in s.shape], v), s.dtype) for s in specs]
        outs = tf.nest.flatten(fn(*args))
        outs_at[v] = [np.asarray(o.numpy(), dtype="float64") for o in outs]
    affine = []
    for k, o0 in enumerate(outs_at[0.0]):
        vals = {v: outs_at[v][k] for v in outs_at}
        if any(a.size == 0 or a.min() != a.max() for a in vals.values()):
            return {"op": "map", "unsupported": "its function does not scale every value alike"}
        b = float(vals[0.0].flat[0])
        a = float(vals[1.0].flat[0]) - b
        if not all(math.isclose(float(vals[v].flat[0]), a * v + b, rel_tol=1e-5, abs_tol=1e-6) for v in (2.0, 200.0)):
            return {"op": "map", "unsupported": "its function is not a plain scaling"}
        affine.append([a, b])
    out_specs = tf.nest.flatten(ds.element_spec)
    return {"op": "map", "affine": affine, "dtypes": [s.dtype.name for s in out_specs], "components": len(out_specs)}


def _describe_pipeline(ds):
    """The structure of a ``tf.data`` pipeline as data, source first: the grader rebuilds it on its own data."""
    ops, d = [], ds
    for _ in range(50):
        name = type(d).__name__.strip("_").replace("Dataset", "")
        if name in ("Map", "ParallelMap"):
            ops.append(_describe_map(d))
        elif name in ("Batch", "ParallelBatch"):
            ops.append({"op": "batch", "size": int(d._batch_size), "drop_remainder": bool(d._drop_remainder)})
        elif name == "Shuffle":
            ops.append({"op": "shuffle", "buffer": int(d._buffer_size),
                        "reshuffle": bool(d._reshuffle_each_iteration),
                        "seeded": bool(int(d._seed) or int(d._seed2))})
        elif name in ("Repeat", "Take"):
            ops.append({"op": name.lower(), "count": int(d._count)})
        elif name in ("Prefetch", "Cache", "Options"):
            ops.append({"op": name.lower()} if name != "Cache" or not bytes(d._filename.numpy()) else
                       {"op": "unsupported", "name": "cache to a file"})
        elif name == "TensorSlice":
            comps = list(d._tensors)
            ops.append({"op": "source", "components": [_describe_data(t.numpy()) for t in comps],
                        "structure": type(d.element_spec).__name__})
            break
        else:
            ops.append({"op": "unsupported", "name": type(d).__name__.strip("_")})
            break
        d = getattr(d, "_input_dataset", None)
        if d is None:
            break
    return {"kind": "dataset", "ops": ops[::-1], "element_spec": str(ds.element_spec)[:300]}


CALLBACK_SETTINGS = ("monitor", "patience", "factor", "min_delta", "restore_best_weights", "min_lr", "cooldown",
                     "mode", "start_from_epoch")


def _callback_summary(cb):
    info = {"class": type(cb).__name__}
    for key in CALLBACK_SETTINGS:
        if hasattr(cb, key):
            value = getattr(cb, key)
            if isinstance(value, (int, float, str, bool)) or value is None:
                info[key] = value
    return info


def install_fit_recorder():
    import keras

    def recorded_fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None,
                     validation_split=0.0, validation_data=None, shuffle=True, class_weight=None,
                     sample_weight=None, initial_epoch=0, steps_per_epoch=None, validation_steps=None,
                     validation_batch_size=None, validation_freq=1, **kwargs):
        try:
            compile_config = self.get_compile_config()
        except Exception:
            compile_config = None
        import numbers

        def as_int(v):
            return int(v) if isinstance(v, numbers.Integral) and not isinstance(v, bool) else v

        epochs, batch_size, initial_epoch = as_int(epochs), as_int(batch_size), as_int(initial_epoch)
        if batch_size is None and hasattr(x, "_batch_size"):  # a batched tf.data.Dataset
            try:
                batch_size = int(x._batch_size)
            except Exception:
                pass
        record = {
            "epochs": epochs, "batch_size": batch_size, "initial_epoch": initial_epoch,
            "validation_split": validation_split, "has_validation_data": validation_data is not None,
            "validation_data": None if validation_data is None else _describe_data(validation_data),
            "validation_freq": as_int(validation_freq) if isinstance(validation_freq, numbers.Integral) else str(
                type(validation_freq).__name__),
            "shuffle": shuffle, "class_weight": class_weight is not None,
            "sample_weight": sample_weight is not None, "steps_per_epoch": steps_per_epoch,
            "callbacks": [_callback_summary(cb) for cb in (callbacks or [])],
            "x": _describe_data(x), "y": _describe_data(y), "compile_config": compile_config,
            "extra_kwargs": sorted(kwargs),
        }
        FIT_LOG.append((id(self), record))
        n = max(int(epochs) - int(initial_epoch), 1) if isinstance(epochs, int) else 1
        history = keras.callbacks.History()
        history.set_model(self)
        curve = [0.9 + 0.09 * (1 - math.exp(-i)) for i in range(n)]
        history.history = {"loss": [0.3 * math.exp(-i / 2) for i in range(n)], "accuracy": curve}
        if validation_data is not None or validation_split:
            history.history.update(val_loss=[0.35 * math.exp(-i / 2) for i in range(n)], val_accuracy=curve)
        history.epoch = list(range(initial_epoch, initial_epoch + n))
        history.params = {"epochs": epochs, "verbose": verbose}
        self.history = history
        print(f"[grader] model.fit(epochs={epochs}, batch_size={batch_size}) recorded; "
              "the grader retrains this recipe itself.")
        return history

    keras.Model.fit = recorded_fit


def run_data_setup(source, data_file):
    """The assignment's dataset start-up code (``autograder.spec.Dataset.probe_setup``: the grader's own, from
    setup.json), with ``data_file`` bound to this probe's read-only copy of its data, e.g. so that the
    notebook's ``datasets.mnist.load_data()`` reads it instead of downloading."""
    exec(compile(source, "<dataset setup>", "exec"), {"__name__": "_dataset_setup", "data_file": data_file})


# --- extraction -------------------------------------------------------------------------------

def plain(value, depth=0):
    """Convert to JSON-able data or raise TypeError; numbers become int/float, tuples lists."""
    import numbers

    import numpy as np

    if depth > P.MAX_JSON_DEPTH:
        raise TypeError("nested too deeply")
    if value is None or isinstance(value, (bool, str)):
        return value if not isinstance(value, str) else str(value)[:P.MAX_JSON_STRING]
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (list, tuple)):
        if len(value) > P.MAX_JSON_LIST:
            raise TypeError("list too long")
        return [plain(v, depth + 1) for v in value]
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return plain(value.item(), depth)
    raise TypeError(type(value).__name__)


def extract_value(name, value, functions):
    import numpy as np

    if value is Ellipsis:
        return {"status": P.UNANSWERED}
    if name in functions:
        if not callable(value):
            return {"status": P.ERROR, "message": f"not a function ({type(value).__name__})"}
        outputs = []
        for case in functions[name]:
            send(P.STEP, label=f"probing {name}")
            signal.signal(signal.SIGINT, signal.default_int_handler)
            args = [np.array(a, dtype=np.float64) for a in case["args"]]
            try:
                out = np.array(value(*args, **case["kwargs"]), dtype=np.float64)
                if out.size > MAX_ARRAY_ELEMENTS:
                    raise ValueError(f"output has {out.size} elements")
                outputs.append({"status": P.OK, "npy": npy_b64(out)})
            except KeyboardInterrupt:
                outputs.append({"status": P.ERROR, "message": "TimeoutError: the call exceeded the time limit"})
            except BaseException as exc:  # noqa: BLE001 - student code may raise anything
                outputs.append({"status": P.ERROR, "message": f"{type(exc).__name__}: {str(exc)[:300]}"})
        return {"status": P.FUNCTION, "outputs": outputs}
    if hasattr(value, "to_json") and hasattr(value, "layers"):
        config = value.to_json()
        if not isinstance(config, str) or len(config) > MAX_JSON_CHARS:
            return {"status": P.ERROR, "message": "model config missing or too large"}
        json.loads(config)
        fits = [record for owner, record in FIT_LOG if owner == id(value)]
        return {"status": P.MODEL, "config": config, "fits": fits}
    if isinstance(value, np.ndarray) and value.ndim > 0:
        if value.size > MAX_ARRAY_ELEMENTS:
            return {"status": P.ERROR, "message": f"array too large ({value.size} elements)"}
        if value.dtype.kind not in "biuf":
            return {"status": P.ERROR, "message": f"array of dtype {value.dtype} is not numeric"}
        return {"status": P.ARRAY, "npy": npy_b64(np.array(value))}
    try:
        data = plain(value)
    except TypeError as exc:
        return {"status": P.ERROR, "message": f"unsupported type {type(value).__name__} ({exc})"}
    text = json.dumps(data)
    if len(text) > MAX_JSON_CHARS:
        return {"status": P.ERROR, "message": "value too large"}
    return {"status": P.JSON, "value": data}


class _InertGrader:
    """Stands in for ``otter.Notebook``: Otter's own checks do not run in the sandbox."""

    def __init__(self, *args, **kwargs):
        pass

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def install_otter_stub():
    import types

    stub = types.ModuleType("otter")
    stub.Notebook = _InertGrader
    sys.modules["otter"] = stub


WARM_IMPORTS = ("numpy", "tensorflow", "keras")  # what notebooks import: done before any work is handed over


def read_job(fd=0):
    """The work, sent by the grader on stdin once this process said ``ready``; stdin is /dev/null afterwards."""
    chunks = []
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, fd)
    os.close(null)
    return json.loads(b"".join(chunks))


def write_files(files):
    """Files the grader sent with the submission (base64), written beside the notebook as this process's
    own user: plain names only, never over an existing file or through a link."""
    for name, b64 in files.items():
        if not isinstance(name, str) or not name or "/" in name or name.startswith(".") or "\0" in name:
            continue
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o444)
        with os.fdopen(fd, "wb") as f:
            f.write(base64.b64decode(b64))


def main():
    global STATUS, GO
    setup = json.load(open(sys.argv[1]))  # start-up settings only: nothing of any submission
    STATUS = int(sys.argv[2])
    GO = int(sys.argv[3]) if len(sys.argv) > 3 else None

    import importlib

    for name in WARM_IMPORTS:
        try:
            importlib.import_module(name)
        except Exception:  # missing (e.g. no TensorFlow under JAX): the notebook's own imports will say so
            pass
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance(colors="nocolor")
    # a notebook imports modules beside it (cnn_checks.py) as in Jupyter; last, so nothing is shadowed
    sys.path.append(os.getcwd())
    install_otter_stub()
    try:
        if setup.get("data_setup") and setup.get("data_file"):
            run_data_setup(setup["data_setup"], setup["data_file"])
        if not setup.get("real_fit"):
            install_fit_recorder()
    except Exception as exc:  # keras missing: the notebook's own imports will say so
        send(P.NOTE, message=f"setup: {type(exc).__name__}: {exc}")
    # The grader's start-up ends here; this process may wait (warm) until the grader hands it one
    # submission on stdin.  The student's time starts with the first cell, and their output after this mark.
    sys.stdout.flush()
    sys.stderr.flush()
    os.write(1, P.STARTUP_DONE.encode())
    send(P.READY)
    job = read_job()
    write_files(job.get("files") or {})

    for index, source in job["cells"]:
        send(P.CELL, index=index)
        started = time.monotonic()
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a previous cell may have changed it
        result = shell.run_cell(source, store_history=False)
        error = result.error_before_exec or result.error_in_exec
        send(P.CELL_DONE, index=index, seconds=round(time.monotonic() - started, 3),
             error=None if error is None else f"{type(error).__name__}: {str(error)[:500]}")
        wait_for_go()

    send(P.STEP, label="extract")
    namespace = shell.user_ns
    for name in job["variables"]:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if name not in namespace:
            send(P.VALUE, name=name, data={"status": P.MISSING})
            continue
        try:
            data = extract_value(name, namespace[name], job["functions"])
        except BaseException as exc:  # noqa: BLE001
            data = {"status": P.ERROR, "message": f"{type(exc).__name__}: {str(exc)[:300]}"}
        send(P.VALUE, name=name, data=data)
    send(P.DONE)
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown: student atexit handlers do not run


if __name__ == "__main__":
    main()
