"""The guard beside the run's own trainings: started first, on the workers those trainings leave free."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import torch

from hf_mrl.guard.rule import GuardReport

logger = logging.getLogger(__name__)


class GuardBeside:
    """The guard in a thread of this process, its trainings in `workers` processes, started before the run's own
    trainings. `run_guard(schedule)` is `ReuseTrainer.run_guard` with the schedule below.

    Until `result()` is asked for, one worker's share of the threads stays with the run's trainings
    (`main_threads`) and at most `workers - 1` fold trainings run; then all `workers` do. The fold trainings and the
    looks are those of `run_guard` (same jobs, same order), so the decision is the same; only the schedule
    differs. The run's own trainings use `main_threads` torch threads meanwhile, which can change their last digits
    (reduction order) against a run without the guard beside."""

    def __init__(self, run_guard: Callable[[dict], GuardReport | None], workers: int):
        total = torch.get_num_threads()
        threads = max(1, total // workers)
        self.main_threads = max(1, total - (workers - 1) * threads)
        self.workers, self.wall_s = workers, None
        self._busy, self._stop = threading.Event(), threading.Event()
        self._busy.set()
        self._report, self._error = None, None
        schedule = {"capacity": self._capacity, "stop": self._stop, "threads": threads}
        logger.info(
            "Guard: starting beside the trainings (%d worker(s) now, %d once they end; %d thread(s) each)",
            workers - 1,
            workers,
            threads,
        )

        def target() -> None:
            start = time.perf_counter()
            try:
                self._report = run_guard(schedule)
            except BaseException as err:  # re-raised in the run's thread by result()
                self._error = err
            self.wall_s = round(time.perf_counter() - start, 1)

        self._thread = threading.Thread(target=target, name="hf_mrl-guard", daemon=True)
        self._thread.start()

    def _capacity(self) -> int:
        return self.workers - 1 if self._busy.is_set() else self.workers

    def result(self) -> GuardReport | None:
        """The run's trainings are done: give the guard every worker, wait for its decision."""
        self._busy.clear()
        try:
            self._thread.join()
        except BaseException:  # interrupted while waiting: end the guard's trainings with the run
            self.cancel()
            raise
        if self._error is not None:
            raise self._error
        return self._report

    def cancel(self) -> None:
        """The run failed or was interrupted: stop the guard's trainings and wait for its workers to end."""
        self._stop.set()
        self._thread.join()
