"""The untrusted side: jail a submission, run it under limits, extract its answers as data."""
