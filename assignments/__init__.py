"""Course content: one package per assignment (see autograder.spec and the README, "Add an assignment")."""
