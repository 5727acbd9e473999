"""The digits unit's part of its student-side check module ``digits_checks.py``.

The machinery (canonical answers, digests, the answer, function, model and training checks) is
:mod:`assignments.cnn_common.public_checks`, shared by the CNN units; the build renders
``digits_checks.py`` as that module's source followed by this file's (without the imports below),
with the digest tables filled from :mod:`assignments.digits.checks`: one self-contained file,
digests only.  Here: the unit's words in the model checks and how the training check loads the test images.
"""

from __future__ import annotations

from assignments.cnn_common.public_checks import *  # noqa: F401,F403  (one file when rendered)
from assignments.cnn_common.public_checks import TRAINING

UNIT_MODEL = "the unit's"
INPUT_NAME = "the 8x8 digits"
SHAPE_EXAMPLE = "(6, 6, 16)"
PADDING_HINTS = {
    "same": " (the first Conv2D uses padding='same' to keep 8x8; the second one the default 'valid')",
    "valid": " (this layer uses the default 'valid'; only the first Conv2D is 'same')",
}


def _test_split():
    """The 360 test digits as the notebook's data cell prepares them (scikit-learn's order, the last 360,
    reshaped and divided by 16), and their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    data = TRAINING["data"]
    n = data["test_size"]
    return digits.images[-n:].reshape((n, *data["input_shape"])) / data["pixel_scale"], digits.target[-n:]
