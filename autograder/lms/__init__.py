"""LMS adapters and batch inputs/outputs: Gradescope, Canvas and grade sheets (reports), submissions."""
