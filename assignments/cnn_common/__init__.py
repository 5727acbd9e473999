"""Course content shared by the CNN units (not an assignment: it has no spec, and not engine code).

* :mod:`.reference`: the numpy reference math (convolution, pooling, sizes, parameter counts, layer tables);
* :mod:`.public_checks`: the student-side check machinery; each unit's student module
  (``cnn_checks.py``, ``digits_checks.py``) is this file with the unit's part appended and its
  digest tables filled in (:func:`.judging.render_public_module`): still one self-contained file; the
  training check in it carries the verifier's public rules (:mod:`autograder.student_rules`) and the
  assignment's threshold, budget and data facts, so ``grader.check("training")`` measures the notebook's
  model and refuses what the grader would refuse, with the grader's message;
* :mod:`.judging`: the trusted side's answer judging and the digest tables;
* :mod:`.samples`: writing the sample-submission notebooks.

An assignment that imports this package lists it in its spec (``AssignmentSpec.shared``) so the
build bundles it into the autograder zips next to the assignment's own package.
"""
