"""Training: pre-flight checks (`preflight`), the Ray driver (`driver`), the worker loop (`loop`), checkpoints,
batching and tracking."""

from tuneforge.train.driver import RunResult, resume, train
from tuneforge.train.preflight import PreparedRun, prepare_run

__all__ = ["PreparedRun", "RunResult", "prepare_run", "resume", "train"]
