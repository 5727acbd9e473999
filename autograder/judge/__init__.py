"""The trusted side: judge extracted answers with the Otter tests in a clean process (pipeline: probe -> retrain -> judge)."""
