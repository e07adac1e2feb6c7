"""How `tune --auto` keeps to its budget: a Ray Tune searcher that starts no trial which cannot reach its first
validation event before the deadline, and a stopper that ends each running trial at its first validation past it.
"""

from __future__ import annotations

import time
from typing import Any


def deadline_searcher(inner: Any, deadline: float, first_event_s: float) -> Any:
    """`inner` (a Ray Tune searcher) that starts no trial which cannot reach its first validation event before
    `deadline` (time.time() seconds): the search then ends once the running trials do."""
    from ray.tune.search import Searcher

    class DeadlineSearcher(Searcher):
        def __init__(self) -> None:
            super().__init__(metric=inner.metric, mode=inner.mode)
            self.inner, self.deadline, self.first_event_s = inner, deadline, first_event_s

        def set_search_properties(self, metric: Any, mode: Any, config: dict, **spec: Any) -> bool:
            return self.inner.set_search_properties(metric, mode, config, **spec)

        def suggest(self, trial_id: str) -> Any:
            if time.time() + self.first_event_s > self.deadline:
                return Searcher.FINISHED
            return self.inner.suggest(trial_id)

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            self.inner.on_trial_result(trial_id, result)

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            self.inner.on_trial_complete(trial_id, result=result, error=error)

        def save(self, checkpoint_path: str) -> None:
            self.inner.save(checkpoint_path)

        def restore(self, checkpoint_path: str) -> None:
            self.inner.restore(checkpoint_path)

    return DeadlineSearcher()


def deadline_stopper(deadline: float) -> Any:
    """Stops each trial at its first validation event past `deadline` (the event's checkpoint is on disk)."""
    from ray import tune

    class DeadlineStopper(tune.Stopper):
        def __call__(self, trial_id: str, result: dict) -> bool:
            return time.time() >= deadline

        def stop_all(self) -> bool:
            return False

    return DeadlineStopper()
