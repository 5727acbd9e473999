"""The retraining verifier: canonical rebuild, budget checked before training, training in its own process."""
