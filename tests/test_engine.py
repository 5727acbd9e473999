"""The grading engine against hostile submissions: no unearned credit, and the grader never stops.

Each case is a notebook made from a bundled sample plus one attack cell.  The table in
``ATTACKS`` says what Otter alone gives (measured below with ``otter run`` where that is safe
to do) and what the engine gives.
"""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import psutil
import pytest

from autograder import engine
from assignments.cnn_mnist import sample_answers as samples
from autograder.engine import RetrainOptions
from autograder.probe.sandbox import Limits

NO_RETRAIN = RetrainOptions(enabled=False)
FAST = Limits(cell_seconds=20, notebook_seconds=240, memory_mb=3072, max_processes=48)


def _notebook(tmp_path: Path, base: str, attack: str, *, position: int | None = None, replace: dict | None = None) -> Path:
    nb = nbformat.read(samples.SAMPLES_DIR / f"{base}.ipynb", as_version=4)
    for cell in nb.cells:
        for old, new in (replace or {}).items():
            if cell.cell_type == "code" and old in cell.source:
                cell.source = cell.source.replace(old, new)
    cell = nbformat.v4.new_code_cell(attack)
    nb.cells.insert(len(nb.cells) - 2 if position is None else position, cell)
    path = tmp_path / f"{base}-attack.ipynb"
    nbformat.write(nb, path)
    return path


def _scores(result: dict) -> dict[str, float]:
    return {q["name"]: q["score"] for q in result["questions"]}


def _otter(notebook: Path, autograder: Path, tmp_path: Path):
    import otter.run

    return otter.run.main(str(notebook), autograder=str(autograder), output_dir=str(tmp_path), no_logo=True)


WRONG = {"size_valid = 24": "size_valid = 25", "conv_small = np.array([[1, 4], [3, 3]])": "conv_small = np.zeros((2, 2))"}


def test_patched_numpy_and_checks_fool_otter_but_not_the_engine(autograder, tmp_path):
    attack = (
        "import numpy, numpy.testing\n"
        "numpy.allclose = lambda *a, **k: True\n"
        "numpy.testing.assert_allclose = lambda *a, **k: None\n"
        "import cnn_checks, assignments.cnn_mnist.checks as hidden\n"
        "for mod in (cnn_checks, hidden):\n"
        "    for fn in ('check_answer', 'check_function', 'check_model', 'check_training', 'check_accuracy'):\n"
        "        setattr(mod, fn, lambda *a, **k: None)\n"
    )
    nb = _notebook(tmp_path, "by_hand_mistakes", attack, replace=WRONG)
    otter_scores = {k: v.score for k, v in _otter(nb, autograder, tmp_path).results.items()}
    result = engine.grade_notebook(nb, autograder, limits=FAST, retrain=NO_RETRAIN)
    ours = _scores(result)
    # Otter alone: every patched check passes, full marks on questions the sample gets wrong.
    assert otter_scores["conv_small"] == 2 and otter_scores["output_sizes"] == 4 and otter_scores["conv2d_impl"] == 4
    # The engine judges in a clean process: the same questions get nothing.
    assert ours["conv_small"] == 0 and ours["conv2d_impl"] == 0 and ours["output_sizes"] < 4
    assert result["status"] == "graded"


def test_lying_objects_get_no_credit(autograder, tmp_path):
    attack = (
        "class AlwaysEqual(int):\n"
        "    def __eq__(self, other): return True\n"
        "    def __ne__(self, other): return False\n"
        "    __hash__ = int.__hash__\n"
        "size_valid = AlwaysEqual(7)\n"
        "class Lie(np.ndarray):\n"
        "    def __eq__(self, other): return np.ones(np.shape(other), bool)\n"
        "    def tolist(self): return [[1.0, 4.0], [3.0, 3.0]]\n"
        "conv_small = np.zeros((2, 2)).view(Lie)\n"
        "class Fake(dict):\n"
        "    def __eq__(self, other): return True\n"
        "rgb_output_shape = Fake()\n"
    )
    nb = _notebook(tmp_path, "solution", attack, position=20)
    result = engine.grade_notebook(nb, autograder, limits=FAST, retrain=NO_RETRAIN)
    questions = {q["name"]: q for q in result["questions"]}
    assert questions["conv_small"]["score"] == 0
    assert questions["output_sizes"]["score"] == 3  # only size_valid lost
    assert questions["rgb_conv"]["score"] == 1
    messages = " ".join(c["message"] for c in questions["rgb_conv"]["cases"])
    assert "could not be read" in messages or "should be a tuple" in messages


def test_grader_files_cannot_be_read_or_rewritten(autograder, tmp_path):
    import assignments.cnn_mnist.checks as checks_module

    before = Path(checks_module.__file__).read_bytes()
    attack = (
        "import glob, os, assignments.cnn_mnist.checks as c\n"
        "found = [p for p in glob.glob('/**/tests/*.py', recursive=False)] + glob.glob('../**/tests/*.py')\n"
        "print('FOUND', found)\n"
        "try:\n"
        "    open(c.__file__, 'a').write('\\ncheck_answer = lambda *a, **k: None\\n')\n"
        "    print('WROTE GRADER')\n"
        "except OSError as e:\n"
        "    print('DENIED', e)\n"
        "for target in ('results.json', '../results/results.json'):\n"
        "    try:\n"
        "        open(target, 'w').write('{\"score\": 33}')\n"
        "    except OSError:\n"
        "        pass\n"
    )
    nb = _notebook(tmp_path, "by_hand_mistakes", attack)
    result = engine.grade_notebook(nb, autograder, limits=FAST, retrain=NO_RETRAIN)
    assert Path(checks_module.__file__).read_bytes() == before
    if "WROTE GRADER" in result["execution"]["output_tail"]:  # no OS isolation here: caught by the fingerprint
        assert result["status"] == "error" and "changed" in result["error"]
    else:
        assert _scores(result)["conv_small"] == 0
    assert "hidden=True" not in result["execution"]["output_tail"]


@pytest.mark.parametrize(
    "name, attack, crashes",
    [
        ("sys.exit", "import sys\nsys.exit(0)", False),
        ("raise", "raise RuntimeError('boom')", False),
        ("os._exit", "import os\nos._exit(0)", True),
        ("segfault", "import ctypes\nctypes.string_at(0)", True),
        ("infinite loop", "while True:\n    pass", False),
        ("loop ignoring interrupts", "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass", True),
        ("memory bomb", "hog = []\nwhile True:\n    hog.append(bytearray(200 * 1024 * 1024))", True),
        ("huge output", "for _ in range(200):\n    print('x' * 1_000_000)", False),
    ],
)
def test_crashes_loops_and_bombs_cost_at_most_that_cell(name, attack, crashes, autograder, tmp_path):
    limits = Limits(cell_seconds=5, notebook_seconds=120, memory_mb=2048, max_processes=48)
    nb = _notebook(tmp_path, "solution", attack, position=20)  # after the hand questions
    result = engine.grade_notebook(nb, autograder, limits=limits, retrain=NO_RETRAIN)
    assert result["status"] == "graded", result["error"]
    scores = _scores(result)
    assert set(scores) >= {"conv_small", "training"}  # every question is reported, with its maximum
    assert scores["conv_small"] == 2 and scores["layer_table"] == 6  # answers around the attack still count
    skipped = result["execution"]["skipped_cells"]
    if crashes:  # the notebook ran again without the cell that brought it down, and says so
        assert [s["index"] for s in skipped] == [20] and result["execution"]["runs"] == 2
        assert "not run" in next(c for c in result["execution"]["cells"] if c["index"] == 20)["error"]
    else:
        assert skipped == [] and result["execution"]["runs"] == 1
    if name == "huge output":
        assert len(result["execution"]["output_tail"]) <= 20000
    if name == "infinite loop":
        assert any("cell time limit" in hit for hit in result["limits_hit"])


def test_fork_bomb_of_long_lived_children_is_reaped(autograder, tmp_path):
    attack = (
        "import subprocess\n"
        "kids = [subprocess.Popen(['sleep', '987'], start_new_session=True) for _ in range(80)]\n"
    )
    nb = _notebook(tmp_path, "solution", attack, position=20)
    result = engine.grade_notebook(nb, autograder, limits=Limits(cell_seconds=20, max_processes=40), retrain=NO_RETRAIN)
    assert any("process limit" in hit for hit in result["limits_hit"])
    assert result["status"] == "graded" and result["execution"]["skipped_cells"][0]["index"] == 20
    leftovers = [p for p in psutil.process_iter(["cmdline"]) if (p.info["cmdline"] or [])[:2] == ["sleep", "987"]]
    assert leftovers == []


def test_printed_accuracy_and_fake_model_wrapper_count_for_nothing(autograder, tmp_path):
    attack = (
        "import keras\n"
        "class Confident(keras.Sequential):\n"
        "    def evaluate(self, *a, **k): return [0.0, 0.999]\n"
        "    def predict(self, x, **k):\n"
        "        (_, _), (_, y) = datasets.mnist.load_data()\n"
        "        return np.eye(10)[y[:len(x)]]\n"
        "fake = Confident(model.layers)\n"
        "fake.compile(optimizer='adam', loss='sparse_categorical_crossentropy', metrics=['accuracy'])\n"
        "fake.fit(train_images[:512], train_labels[:512], epochs=1)  # its numbers are faked anyway\n"
        "model = fake\n"
        "print('test accuracy 0.999')\n"
    )
    nb = _notebook(tmp_path, "untouched", attack, replace={
        "model = models.Sequential()\n...": "model = models.Sequential()\n" + samples.SEED_MODEL_CODE})
    otter = _otter(nb, autograder, tmp_path)
    result = engine.grade_notebook(nb, autograder, limits=FAST, retrain=RetrainOptions(cache_dir=str(tmp_path / "cache")))
    # Otter alone: its public check refuses the subclassed wrapper, but the hidden accuracy case believes it
    assert otter.results["training"].score > 0
    training = next(q for q in result["questions"] if q["name"] == "training")
    assert training["score"] == 0
    assert "not retrained" in " ".join(c["message"] for c in training["cases"])


VARIANTS = {
    "functional API, int kernel sizes, tf.keras": (
        "inputs = tf.keras.Input(shape=(28, 28, 1))\n"
        "x = tf.keras.layers.Conv2D(32, 3, activation='relu')(inputs)\n"
        "x = tf.keras.layers.MaxPool2D()(x)\n"
        "x = tf.keras.layers.Conv2D(64, 3, activation='relu')(x)\n"
        "x = tf.keras.layers.MaxPool2D()(x)\n"
        "x = tf.keras.layers.Conv2D(64, 3, activation='relu')(x)\n"
        "x = tf.keras.layers.Flatten()(x)\n"
        "x = tf.keras.layers.Dense(64, activation='relu')(x)\n"
        "model = tf.keras.Model(inputs, tf.keras.layers.Dense(10, activation='softmax')(x))\n",
        "model.compile(optimizer=tf.keras.optimizers.Adam(1e-3), loss=tf.keras.losses.SparseCategoricalCrossentropy(),"
        " metrics=['accuracy'])\nmodel.fit(x=train_images, y=train_labels, epochs=np.int64(3), batch_size=np.int32(64))"),
    "separate Activation layers, list constructor, one-hot labels, validation split": (
        "model = models.Sequential([layers.Input((28, 28, 1)), layers.Conv2D(32, (3, 3)), layers.Activation('relu'),"
        " layers.MaxPooling2D(2), layers.Conv2D(64, (3, 3)), layers.ReLU(), layers.MaxPooling2D(2),"
        " layers.Conv2D(64, (3, 3), activation='relu'), layers.Flatten(), layers.Dropout(0.25),"
        " layers.Dense(64, activation='relu'), layers.Dense(10), layers.Softmax()])\n",
        "model.compile('rmsprop', 'categorical_crossentropy', metrics=['accuracy'])\n"
        "model.fit(train_images, tf.keras.utils.to_categorical(train_labels), epochs=2, validation_split=0.1,"
        " callbacks=[tf.keras.callbacks.EarlyStopping(patience=1)])"),
    "Rescaling inside the model, raw pixels": (
        "model = models.Sequential([layers.Input((28, 28, 1)), layers.Rescaling(1 / 255),"
        " layers.Conv2D(32, 3, activation='relu'), layers.MaxPooling2D(), layers.Conv2D(64, 3, activation='relu'),"
        " layers.MaxPooling2D(), layers.Conv2D(64, 3, activation='relu'), layers.Flatten(),"
        " layers.Dense(64, activation='relu'), layers.Dense(10, activation='softmax')])\n",
        "model.compile(optimizer='adam', loss='sparse_categorical_crossentropy', metrics=['accuracy'])\n"
        "model.fit(train_images * 255, train_labels, epochs=1)"),
    "tf.data pipeline with a map scaling, its own batch size and validation_data (issue 18)": (
        "model = models.Sequential([layers.Input((28, 28, 1)),"
        " layers.Conv2D(32, 3, activation='relu', kernel_initializer='he_uniform'), layers.MaxPooling2D(),"
        " layers.Conv2D(64, 3, activation='relu'), layers.MaxPooling2D(), layers.Conv2D(64, 3, activation='relu'),"
        " layers.Flatten(), layers.Dense(64, activation='relu', kernel_regularizer=tf.keras.regularizers.l2(1e-4)),"
        " layers.Dense(10, activation='softmax')])\n",
        "model.compile(optimizer='adam', loss='sparse_categorical_crossentropy', metrics=['accuracy'])\n"
        "raw = (train_images * 255).round().astype('uint8')\n"
        "ds = tf.data.Dataset.from_tensor_slices((raw, train_labels)).map(lambda x, y: (tf.cast(x, tf.float32) / 255.0,"
        " y)).shuffle(10000).batch(128).prefetch(tf.data.AUTOTUNE)\n"
        "model.fit(ds, epochs=2, validation_data=(test_images, test_labels),"
        " callbacks=[tf.keras.callbacks.EarlyStopping(monitor='val_accuracy', patience=1)])"),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_real_world_ways_of_writing_the_model_are_understood(variant, autograder, tmp_path):
    build_code, train_code = VARIANTS[variant]
    nb = nbformat.read(samples.SAMPLES_DIR / "untouched.ipynb", as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code" and cell.source.startswith("model = models.Sequential()"):
            cell.source = build_code
        elif cell.cell_type == "code" and cell.source.strip() == "...":
            cell.source = train_code
    path = tmp_path / "variant.ipynb"
    nbformat.write(nb, path)
    result = engine.grade_notebook(path, autograder, limits=FAST, retrain=NO_RETRAIN)
    questions = {q["name"]: q for q in result["questions"]}
    assert questions["model_structure"]["score"] == questions["model_structure"]["max_score"], questions["model_structure"]
    public_training = next(c for c in questions["training"]["cases"] if not c["hidden"])
    assert public_training["passed"], public_training["message"]


# --- execution.output_tail: the student's own output ------------------------------------------------

def test_output_tail_leaves_out_the_graders_start_up_and_keeps_everything_the_student_printed():
    from autograder import protocol
    from autograder.probe import jail
    from autograder.probe.output import student_output

    startup = ("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
               "I0000 00:00:1796622751.938348       2 cudart_stub.cc:31] Could not find cuda drivers on your machine\n")
    mine = "WARNING: All log messages before absl::InitializeLog() is called\nmy own line\n"  # the student's print
    assert student_output(startup + protocol.STARTUP_DONE + mine) == mine
    assert student_output(startup + "no marker: the runtime died starting\n") == \
        startup + "no marker: the runtime died starting\n"  # then it is the grader's diagnosis, kept whole
    forged = protocol.STARTUP_DONE + "first\n" + protocol.STARTUP_DONE + "second\n"
    assert student_output(forged) == "first\n" + protocol.STARTUP_DONE + "second\n"  # only the runtime's own mark
    env = jail.Jail("bwrap", Path("/nonexistent"), python="/usr/bin/python3").env()
    assert env["JOBLIB_MULTIPROCESSING"] == "0" and env["TF_CPP_MIN_LOG_LEVEL"] == "3"
    assert env["MPLCONFIGDIR"].startswith(jail.WORK_INSIDE) and "/etc/fonts" in jail.ETC_FILES


def test_output_tail_names_no_path_of_the_grading_host(tmp_path):
    import sys
    import tempfile

    from autograder.probe import jail
    from autograder.probe.output import PYTHON, SITE_PACKAGES, WORK, neutral_paths

    trees = jail.python_trees(jail.probe_python(), [])
    site = next(p for p in sys.path if p.endswith("site-packages"))
    work = tempfile.mkdtemp(prefix="cnn-probe-")
    text = (f'File {site}/keras/src/utils/traceback_utils.py:122, in error_handler\n'
            f"FileNotFoundError: [Errno 2] No such file or directory: '{work}/data.csv'\n"
            f"{sys.prefix}/bin/python and {trees[0]}\n"
            "/home/student/mine.txt stays: not a path of this host's grader\n")
    cleaned = neutral_paths(text)
    for host in (site, work, sys.prefix, *trees):
        assert host not in cleaned, host
    assert f"File {SITE_PACKAGES}/keras/src/utils/traceback_utils.py:122" in cleaned
    assert f"'{WORK}/data.csv'" in cleaned and f"{PYTHON}/bin/python" in cleaned
    assert "/home/student/mine.txt stays" in cleaned
    os.rmdir(work)
