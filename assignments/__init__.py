"""Course content: one package per assignment (see autograder.spec and docs/authors/adding-an-assignment.md)."""
