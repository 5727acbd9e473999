"""Otter plugin: make the seed's ``datasets.mnist.load_data()`` work offline during grading.

Named in the assignment config (``plugins: [autograder.otter_plugin.OfflineMNIST]``), so
``otter run`` and the Gradescope autograder insert one cell before the student's code that
points Keras' MNIST loader at the verified local copy (see :mod:`autograder.data`).
"""

import nbformat
from otter.plugins import AbstractOtterPlugin

SETUP_SOURCE = (
    "from autograder.data import install_keras_offline_mnist as _cnn_grader_offline_mnist\n"
    "_cnn_grader_offline_mnist()\n"
    "del _cnn_grader_offline_mnist"
)


class OfflineMNIST(AbstractOtterPlugin):
    def before_execution(self, submission):
        if isinstance(submission, nbformat.NotebookNode):
            cell = nbformat.v4.new_code_cell(SETUP_SOURCE)
            cell.pop("id", None)
            submission.cells.insert(0, cell)
        return submission
