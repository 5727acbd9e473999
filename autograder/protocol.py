"""The probe <-> grader protocol, in one dependency-free module that both sides import.

The probe runtime (untrusted side, :mod:`autograder.probe.runtime`) runs in the jail with nothing
of the grader but a copy of this file beside it; it writes one JSON object per line on its status
pipe.  The sandbox (:mod:`autograder.probe.sandbox`) checks every message against the kinds,
statuses and caps below, and hands the values on to the judge (:mod:`autograder.judge.judge`),
which turns each status into what Otter's test functions receive.  The judge itself runs in a
fresh process: :func:`judge_request` is what the pipeline sends it, :data:`JUDGE_REPLY` marks its
answer.  Standard library only; nothing here may import from :mod:`autograder`.
"""

# --- status pipe: message kinds (runtime -> sandbox), in the order a run sends them -------------
READY = "ready"  # start-up finished: the student's time starts with the first cell
CELL = "cell"  # a cell starts (index)
CELL_DONE = "cell_done"  # it ended (index, seconds, error)
STEP = "step"  # a phase: label "extract", then "probing <name>"
NOTE = "note"  # a remark from the runtime's setup (message)
VALUE = "value"  # one graded variable (name, data: a value below)
DONE = "done"  # every variable sent
MESSAGE_KINDS = (READY, CELL, CELL_DONE, STEP, NOTE, VALUE, DONE)

# --- values: data["status"] ----------------------------------------------------------------------
JSON = "json"  # plain JSON: value
ARRAY = "array"  # numeric numpy array: npy (base64 of np.save, allow_pickle=False)
FUNCTION = "function"  # a student function: outputs, one per planned call (status OK with npy, or ERROR)
MODEL = "model"  # a Keras model: config (JSON text) and fits (recorded fit calls)
UNANSWERED = "unanswered"  # still `...`
ERROR = "error"  # could not be extracted: message
MISSING = "missing"  # not defined (Otter's convention: the test receives None)
VALUE_STATUSES = (JSON, ARRAY, FUNCTION, MODEL, UNANSWERED, ERROR, MISSING)
OK = "ok"  # one call of a student function returned an array

# --- caps both sides apply (the runtime bounds what it sends; the sandbox checks again) ---------
MAX_ARRAY_ELEMENTS = 1_000_000
MAX_JSON_CHARS = 1_000_000
MAX_JSON_DEPTH, MAX_JSON_LIST, MAX_JSON_STRING = 6, 10_000, 10_000
MAX_NPY_CHARS = (MAX_ARRAY_ELEMENTS * 8 + 1024) * 4 // 3 + 8  # base64 of 1M float64 plus the .npy header
MAX_FITS, MAX_FIT_CHARS = 20, 20_000
MAX_ERROR_CHARS = 500

# --- the probe's output (stdout and stderr, one pipe) ---------------------------------------------
# The runtime writes this line when its own start-up (imports, setup) is over and the first cell is next:
# what comes before it is the grader's start-up, not the student's output (autograder.probe.output).
STARTUP_DONE = "\x1e[grader: start-up done; the notebook's output follows]\n"

# --- files the sandbox puts into the jail ----------------------------------------------------------
RUNTIME_FILE = "probe_runtime.py"
PROTOCOL_FILE = "autograder_protocol.py"  # this module, beside the runtime


def planned_call(args: list, kwargs: dict) -> dict:
    """One call the probe makes on a student function (grader-chosen inputs, plain JSON)."""
    return {"args": args, "kwargs": kwargs}


# --- the judge process (pipeline -> judge, trusted on both ends) ----------------------------------
JUDGE_REPLY = "\n@@JUDGE@@"  # the judge's JSON answer follows the last occurrence on its stdout


def judge_request(*, tests: dict, public_module: str, public_module_name: str, values: dict, functions: dict,
                  retrain: dict | None) -> dict:
    """What the judge reads on stdin: the Otter test files and the student-side check module (both from
    the autograder zip), the values the probe extracted, the planned calls and the retraining reports."""
    return {"tests": tests, "public_module": public_module, "public_module_name": public_module_name,
            "values": values, "functions": functions, "retrain": retrain}
