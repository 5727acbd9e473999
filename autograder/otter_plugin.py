"""Otter plugin: make the notebook's own data loading (``datasets.mnist.load_data()``) work offline.

Named in the assignment config (``plugins: [autograder.otter_plugin.OfflineMNIST]``), so
``otter run`` and the Gradescope autograder insert one cell before the student's code that asks the
notebook's assignment (its metadata names it) to point its loader at the verified local copy
(:func:`autograder.data.install_offline`, which calls the dataset's ``install_offline``).
"""


import nbformat
from otter.plugins import AbstractOtterPlugin

SETUP_SOURCE = (
    "from autograder.data import install_offline as _cnn_grader_offline_data\n"
    "_cnn_grader_offline_data({assignment})\n"
    "del _cnn_grader_offline_data"
)


def setup_source(nb) -> str:
    """The cell that provisions the notebook's dataset offline (None: the notebook names no assignment)."""
    from autograder.registry import notebook_assignment

    return SETUP_SOURCE.format(assignment=repr(notebook_assignment(nb)))


class OfflineMNIST(AbstractOtterPlugin):
    def before_execution(self, submission):
        if isinstance(submission, nbformat.NotebookNode):
            cell = nbformat.v4.new_code_cell(setup_source(submission))
            cell.pop("id", None)
            submission.cells.insert(0, cell)
        return submission
