"""The guard's fold trainings: one job per (fold, method), run in worker processes that end with their parent."""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import threading
import time

import torch

from hf_mrl.data.images import take
from hf_mrl.data.types import TargetData
from hf_mrl.guard.rule import _cells
from hf_mrl.reuse.outputs import TeacherOutputs
from hf_mrl.training.config import MRLConfig
from hf_mrl.training.trainer import StudentTrainer

logger = logging.getLogger(__name__)


def _fold_job(config: MRLConfig, data: TargetData, reuse, teacher_ids, fold: torch.Tensor, f: int, student_spec):
    """Train `config.method` without fold `f` and say which of fold `f`'s labeled samples it predicts right."""
    from hf_mrl.training.strategies import get_strategy

    needs_teachers = get_strategy(config.method).needs_teachers
    train, held = fold != f, fold == f
    sub = dataclasses.replace(
        data,
        labeled_images=take(data.labeled_images, train),
        labeled_labels=data.labeled_labels[train],
        labeled_domains=None if data.labeled_domains is None else data.labeled_domains[train],
    )
    sub_reuse = None
    if needs_teachers:
        sub_reuse = dataclasses.replace(reuse, probs_l=reuse.probs_l[train], feats_l=reuse.feats_l[train])
    trainer = StudentTrainer(
        config, sub, sub_reuse, teacher_ids=teacher_ids if needs_teachers else None, student_spec=student_spec
    )
    trainer.train(progress=False)
    return trainer.predict(take(data.labeled_images, held)) == data.labeled_labels[held]


def _init_worker(threads: int, parent: int | None = None) -> None:
    from tqdm.auto import tqdm

    torch.set_num_threads(threads)
    logging.getLogger().setLevel(logging.WARNING)
    # tqdm's default lock is a multiprocessing semaphore; a worker terminated by a settled look never releases it,
    # and the resource tracker then warns of "leaked semaphore objects" at exit. A spawned worker shares no bar.
    tqdm.set_lock(threading.RLock())
    if parent is not None:
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


def _watch_parent(parent: int, every: float = 1.0) -> None:
    """End this worker once its parent is gone (a `kill -9` leaves a pool's workers orphaned, each holding a
    training's memory, and the resource tracker waiting on them). A dead parent's children are re-parented, so a
    change of `getppid` is the signal; it needs no help from the parent, which may never run again."""
    while os.getppid() == parent:
        time.sleep(every)
    os._exit(1)


def _worker_pool(workers: int, threads: int):
    """Spawned processes for the guard's trainings that die with this process."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    # spawn, not fork: a forked child of a process that has started OpenMP threads can deadlock.
    return ProcessPoolExecutor(workers, mp.get_context("spawn"), _init_worker, (threads, os.getpid()))


def _run_jobs(
    jobs: list[tuple],
    workers: int,
    progress: bool,
    desc: str,
    on_result=None,
    fn=None,
    capacity=None,
    stop: threading.Event | None = None,
    threads: int | None = None,
) -> list[torch.Tensor | None]:
    """Run `fn(*job)` (default `_fold_job`) for every job, in `workers` processes (1: here), in list order, with a
    bar and a log line each.

    `on_result(i, result, bar)`, when given, is called after each job; when it returns True the rest is settled:
    jobs not started are never started and running ones are terminated (their results stay None). At most `workers`
    jobs are submitted at a time, so that what is queued is exactly what has not started.

    `capacity()`, when given, is how many jobs may run at once now (at most `workers`; at least 1): the guard running
    beside the run's own trainings leaves their core free until they end. `stop`, when set, ends everything as a
    settled look does (the run failed or was interrupted). `threads`: torch threads per worker (default: this
    process's count shared out).
    """
    from tqdm.auto import tqdm

    fn = fn or _fold_job

    def stopped() -> bool:
        return stop is not None and stop.is_set()

    bar = tqdm(total=len(jobs), desc=desc, disable=not progress, mininterval=0 if sys.stderr.isatty() else 30.0)
    results: list[torch.Tensor | None] = [None] * len(jobs)

    def done(i: int, ok: torch.Tensor) -> bool:
        results[i] = ok
        bar.update(1)
        if fn is _fold_job:
            logger.info(
                "Guard: %s without fold %d: %d/%d held-out labels right (%d/%d trainings done)",
                jobs[i][0].method,
                jobs[i][5],
                int(ok.sum()),
                len(ok),
                sum(r is not None for r in results),
                len(jobs),
            )
        return bool(on_result is not None and on_result(i, ok, bar))

    if workers <= 1:
        for i, job in enumerate(jobs):
            if stopped() or done(i, fn(*job)):
                break
    else:
        from concurrent.futures import FIRST_COMPLETED, wait

        threads = threads or max(1, torch.get_num_threads() // workers)
        pool = _worker_pool(workers, threads)
        running: dict = {}
        settled, nxt = False, 0
        # with a capacity that can grow, or a stop signal, wake up now and then to see them
        poll = None if capacity is None and stop is None else 0.5
        try:
            while nxt < len(jobs) or running:
                allowed = workers if capacity is None else max(1, min(workers, capacity()))
                while nxt < len(jobs) and len(running) < allowed:
                    running[pool.submit(fn, *jobs[nxt])] = nxt
                    nxt += 1
                finished, _ = wait(running, timeout=poll, return_when=FIRST_COMPLETED)
                if stopped():
                    settled = True
                    break
                for future in sorted(finished, key=running.get):
                    i = running.pop(future)
                    if done(i, future.result()):
                        settled = True
                        break
                if settled:
                    break
        finally:
            if settled and running:
                # The executor cannot cancel a running job; these results can no longer change the decision.
                logger.info(
                    "Guard: %s; stopping %d running training(s), %d never started",
                    "the run stopped" if stopped() else "settled",
                    len(running),
                    len(jobs) - nxt,
                )
                for process in list((getattr(pool, "_processes", None) or {}).values()):
                    process.terminate()
            pool.shutdown(wait=True, cancel_futures=True)
    bar.close()
    return results


def default_workers(trainings: int, accelerator=None) -> int:
    """Processes for the guard's trainings: one per core, on a single-process CPU run; else 1 (a multi-process run
    already spreads each training over its processes, and one GPU is best used by one training at a time)."""
    if accelerator is not None and (accelerator.num_processes > 1 or accelerator.device.type != "cpu"):
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, trainings))


def fold_correctness(
    config: MRLConfig,
    data: TargetData,
    reuse: TeacherOutputs | None,
    teacher_ids: list[str] | None,
    fold: torch.Tensor,
    student_spec: dict | None = None,
    workers: int = 1,
    progress: bool = False,
) -> torch.Tensor:
    """Whether each labeled sample is predicted right by `config.method` trained on the other folds -> bool, the
    shape of `fold` ((n,) or (repeats, n); False where fold is -1, never held out).

    A method that reads no teacher (supervised) ignores `reuse` and `teacher_ids`, so its vector depends only on the
    data, the folds and the config: it can be computed once and shared by the guards of several pools. `workers`
    processes train the folds side by side.
    """
    return _correctness([config], data, reuse, teacher_ids, fold, student_spec, workers, progress)[0]


def _correctness(
    configs, data, reuse, teacher_ids, fold, student_spec, workers, progress, schedule=None
) -> list[torch.Tensor]:
    """`fold_correctness` of several configs, all their fold trainings in one pool of workers (`schedule`: the
    `capacity` / `stop` / `threads` options of `_run_jobs`)."""
    flat = fold.ndim == 1
    fold2 = fold[None] if flat else fold
    cells = _cells(fold2)
    jobs = [(c, data, reuse, teacher_ids, fold2[r], f, student_spec) for c in configs for r, f in cells]
    results = _run_jobs(jobs, workers, progress, desc=f"guard ({len(cells)} folds)", **(schedule or {}))
    if any(r is None for r in results):
        raise RuntimeError("the guard's trainings were stopped before they finished")
    out = []
    for i in range(len(configs)):
        ok = torch.zeros(fold2.shape, dtype=torch.bool)
        for j, (r, f) in enumerate(cells):
            ok[r][fold2[r] == f] = results[i * len(cells) + j]
        out.append(ok[0] if flat else ok)
    return out
