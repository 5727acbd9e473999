"""The review page: ``python -m autograder review OUT`` serves hand grading of a graded folder.

* :mod:`.rubric`: a question's rubric items (the master's, and those graders add, kept in
  ``OUT/manual_rubric.json``) and how applying them sets the points and the comment.
* :mod:`.groups`: identical or near-identical answers grouped, so one decision grades them all.
* :mod:`.app`: the Flask application (one question at a time, a POST per save, a secret token,
  CSRF protection, a strict Content-Security-Policy) and the server on 127.0.0.1.

Every save goes to ``OUT/manual_scores.csv`` through :func:`autograder.manual_scores.save`: the
sheet stays the one source of truth, read again on every page and before every write.
"""
