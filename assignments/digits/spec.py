"""The CNN-on-8x8-digits assignment's spec (see autograder.spec).

Everything the engine needs differs from the MNIST unit: scikit-learn's bundled digits (no
download, nothing copied into the probe: the sandbox imports scikit-learn), 8x8x1 inputs with
pixels 0..16, 1,437 training and 360 test images, its own threshold and a budget sized for a
data set where one epoch is 45 steps at batch size 32.  The measurements behind the threshold
are in the master notebook's text (master/digits.ipynb, question "training").
"""

from assignments.digits import data
from assignments.digits.checks import ACCURACY_THRESHOLD
from autograder.spec import AssignmentSpec, Dataset, TrainingPolicy
from autograder.verifier.budget import Budget

DIGITS = Dataset(
    name="scikit-learn digits (8x8)",
    load=data.load_digits_split,
    sha256=data.ARRAY_SHA256,
    input_shape=data.INPUT_SHAPE,
    num_classes=data.NUM_CLASSES,
    train_size=data.N_TRAIN,
    test_size=data.N_TEST,
    pixel_scale=float(data.PIXEL_MAX),
    probe_file=None,  # load_digits() reads the copy inside scikit-learn
)

ASSIGNMENT = AssignmentSpec(
    name="digits",
    title="CNN on 8x8 digits",
    package="assignments.digits",
    checks="assignments.digits.checks",
    public_module_name="digits_checks.py",
    dataset=DIGITS,
    training=TrainingPolicy(
        threshold=ACCURACY_THRESHOLD,
        seed_margin=0.01,  # 360 test images: one image is 0.0028, so the margin is about 4 images
        max_seeds=3,
        require_lesson_model=False,
        # 1,437 images: 45 steps per epoch at batch size 32; 60 epochs at 32 is 2,700 steps
        budget=Budget(max_epochs=60, max_steps=6_000, min_batch_size=16, max_batch_size=1437, max_params=1_000_000),
        max_seconds=300.0,
    ),
    samples="assignments.digits.sample_answers",
    misconceptions="assignments.cnn_common.misconceptions",  # the likely mistakes the feedback names
    shared=("assignments.cnn_common",),  # reference math, check machinery, sample writing shared by the CNN units
    code_answers=("conv_layer_impl", "max_pool_impl", "model_structure", "training"),  # compared for copied code
)
