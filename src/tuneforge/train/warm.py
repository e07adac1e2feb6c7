"""Ray's `worker_process_setup_hook` for the jobs tuneforge starts: every worker process imports the training stack
as it starts, not when a training function first arrives.

Ray starts a job's first workers as soon as the driver connects, while the driver is still writing the run
directory and placing the data in the object store; importing torch, transformers and peft there (~3 s on 2 cores)
takes that time off the path to the first optimizer step (bench/startup.py). A worker started later imports the
same modules either way, so this costs nothing but the memory of modules a worker might not have needed.
"""

from __future__ import annotations


def import_training_stack() -> None:
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401

    import tuneforge.train.loop  # noqa: F401
