"""The guard beside the run's own trainings (issue 21): a worker held back while they run, all workers after, the
same decision as a guard started afterwards, and nothing left running when the run fails."""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest
import torch
from test_trainer import TINY_STUDENT, _data

import hf_mrl.guard.beside as beside_mod
from hf_mrl import MRLConfig, ReuseArguments, ReuseTrainer
from hf_mrl.guard import _run_jobs


def _stamped(seconds: float) -> torch.Tensor:
    start = time.time()
    time.sleep(seconds)
    return torch.tensor([start, time.time()], dtype=torch.float64)


def test_capacity_holds_a_worker_back_until_it_grows():
    grown = threading.Event()

    def on_result(i, out, bar):
        if i == 0:
            grown.set()  # the run's own trainings ended
        return False

    jobs = [(1.0,), (1.0,), (12.0,), (12.0,)]  # long enough for the second worker to start under load
    out = _run_jobs(
        jobs, 2, False, "test", on_result=on_result, fn=_stamped, capacity=lambda: 2 if grown.is_set() else 1
    )
    (s0, e0), (s1, _), (s2, e2), (s3, _) = (o.tolist() for o in out)
    assert s1 >= e0  # one at a time while the capacity is 1 (a runner that ignores it starts both at once)
    assert s3 < e2  # two at a time once it is 2 (a capacity that never grows would run them one after the other)


def test_stop_ends_running_and_queued_jobs():
    stop = threading.Event()
    threading.Timer(1.0, stop.set).start()
    start = time.time()
    out = _run_jobs([(120.0,), (120.0,), (120.0,)], 2, False, "test", fn=_stamped, stop=stop)
    assert time.time() - start < 60 and all(o is None for o in out)


def _run(args: ReuseArguments) -> ReuseTrainer:
    # pseudo-labelling: a method with its own fold trainings that needs no teacher
    config = MRLConfig(method="pl", max_steps=8, batch_size=8, unlabeled_batch_size=8, seed=0)
    return ReuseTrainer(None, _data(n_per_class=3, n_unlabeled=30), config, args)


def test_the_guard_beside_decides_as_the_guard_after(monkeypatch):
    args = ReuseArguments(guard_folds=3, guard_workers=2, progress=False, student=TINY_STUDENT)
    started = []
    real = beside_mod.GuardBeside.__init__

    def spy(self, *a, **kw):
        real(self, *a, **kw)
        started.append(self)

    monkeypatch.setattr(beside_mod.GuardBeside, "__init__", spy)
    beside = _run(args).train()
    assert len(started) == 1 and "guard_total" in beside.metrics["time_s"]
    after = _run(dataclasses.replace(args, guard_beside=False)).train()
    assert len(started) == 1 and "guard_total" not in after.metrics["time_s"]
    # same fold trainings in the same look order: the same evidence and decision
    assert beside.guard == after.guard
    assert beside.guard.trainings == after.guard.trainings > 0


def test_one_worker_does_not_go_beside():
    args = ReuseArguments(guard_folds=3, guard_workers=1, progress=False, student=TINY_STUDENT)
    assert _run(args)._guard_beside(None) is None
    assert _run(dataclasses.replace(args, guard_workers=2, guard_beside=False))._guard_beside(None) is None


def test_a_failed_training_stops_the_guard_beside_it(monkeypatch):
    args = ReuseArguments(guard_folds=3, guard_workers=2, progress=False, student=TINY_STUDENT)
    trainer = _run(args)
    real = trainer._student_trainer

    def failing(config, data=None):
        t = real(config, data)
        if config.method != "supervised":

            def boom(*a, **kw):
                time.sleep(2.0)  # the guard's workers are up and training
                raise RuntimeError("the method's training failed")

            t.train = boom
        return t

    trainer._student_trainer = failing
    with pytest.raises(RuntimeError, match="the method's training failed"):
        trainer.train()
    assert not [t for t in threading.enumerate() if t.name == "hf_mrl-guard"]
    import multiprocessing

    deadline = time.monotonic() + 10
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not multiprocessing.active_children()
