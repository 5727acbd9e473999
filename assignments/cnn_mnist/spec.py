"""The CNN-on-MNIST assignment's spec (see autograder.spec)."""

from assignments.cnn_mnist import data
from autograder.spec import AssignmentSpec, Dataset, TrainingPolicy
from autograder.verifier.budget import Budget

MNIST = Dataset(
    name="MNIST",
    load=data.load_mnist,
    sha256=data.ARRAY_SHA256,
    input_shape=(28, 28, 1),
    num_classes=10,
    train_size=60_000,
    test_size=10_000,
    pixel_scale=255.0,
    probe_file=data.ensure_mnist_npz,  # datasets.mnist.load_data() in the notebook reads it offline
    probe_setup=data.PROBE_SETUP,
    provision=data.ensure_mnist_npz,
    install_offline=data.install_keras_offline_mnist,
)

ASSIGNMENT = AssignmentSpec(
    name="cnn_mnist",
    title="CNN on MNIST",
    package="assignments.cnn_mnist",
    checks="assignments.cnn_mnist.checks",
    public_module_name="cnn_checks.py",
    dataset=MNIST,
    training=TrainingPolicy(threshold=0.99, seed_margin=0.003, max_seeds=3, require_lesson_model=False,
                            budget=Budget(), max_seconds=1800.0),
    samples="assignments.cnn_mnist.sample_answers",
    # the lesson's own recipe, which many students submit as written: build pre-verifies it besides the solution's
    common_recipes="assignments.cnn_mnist.sample_answers",
    misconceptions="assignments.cnn_common.misconceptions",  # the likely mistakes the feedback names
    shared=("assignments.cnn_common",),  # reference math, check machinery, sample writing shared by the CNN units
    code_answers=("conv2d_impl", "max_pool_impl", "model_structure", "training"),  # compared for copied code
)
