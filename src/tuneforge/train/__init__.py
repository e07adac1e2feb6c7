"""Training: the driver (`run`), the worker loop (`loop`), checkpoints, batching and tracking."""

from tuneforge.train.run import PreparedRun, RunResult, prepare_run, resume, train

__all__ = ["PreparedRun", "RunResult", "prepare_run", "resume", "train"]
