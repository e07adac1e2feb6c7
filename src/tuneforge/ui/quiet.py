"""Library chatter (deprecation warnings, weight-loading bars, info logs) would bury the progress display; without
--debug the CLI silences it before any library loads."""

from __future__ import annotations

import logging
import os
import warnings

NOISY_LOGGERS = ("transformers", "peft", "accelerate", "torch.distributed", "bitsandbytes")


def quiet_libraries() -> None:
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
