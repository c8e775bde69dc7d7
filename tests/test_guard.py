"""The never-worse guard: folds, the corrected non-inferiority decision, latent clusters, one-label classes, and a
cross-validation that catches harm. Every decision test is built so that a wrong sign, a missing variance
correction, a missing margin or a guard that always keeps (or always falls back) turns it red."""

from __future__ import annotations

import dataclasses
import math
import os
import sys

import pytest
import torch
from scipy.stats import t as student_t
from test_trainer import TEACHERS, TINY_STUDENT, _data, _misleading_reuse

from hf_mrl import MRLConfig, ReuseArguments, ReuseTrainer
from hf_mrl.guard import (
    corrected_bound,
    cross_validate_reuse,
    decide,
    fold_correctness,
    guard_report,
    latent_clusters,
    repeated_folds,
    sequential_look,
    stratified_folds,
)


def test_stratified_folds_spread_every_class():
    labels = torch.tensor([0] * 6 + [1] * 4 + [2] * 3)
    fold = stratified_folds(labels, 3, seed=0)
    for c in range(3):
        counts = torch.bincount(fold[labels == c], minlength=3)
        assert counts.max() - counts.min() <= 1
    assert torch.equal(fold, stratified_folds(labels, 3, seed=0))
    with pytest.raises(ValueError, match="rarest class has 3"):
        stratified_folds(labels, 4)


def test_a_class_with_one_label_is_trained_on_in_every_fold_and_never_scored():
    labels = torch.tensor([0] * 6 + [1] * 3 + [2])  # class 2 has one label
    fold = stratified_folds(labels, 3, seed=0)
    assert fold[labels == 2].tolist() == [-1]
    assert (fold[labels != 2] >= 0).all()
    reps = repeated_folds(labels, 3, 2, seed=0)
    assert reps.shape == (2, 10) and torch.equal(reps[0], fold) and not torch.equal(reps[0], reps[1])
    # scored over the other classes only; the singleton's correctness is ignored whatever it is
    ok = torch.ones(2, 10, dtype=torch.bool)
    bad = ok.clone()
    bad[:, labels == 2] = False
    a, b = guard_report(ok, ok, reps), guard_report(bad, ok, reps)
    assert a.held_out == 9 and a.unscored == 1 and a.gain == b.gain == 0.0


def test_no_class_with_two_labels_falls_back_without_training():
    data = _data(n_per_class=1, n_unlabeled=6)
    runner = ReuseTrainer(None, data, MRLConfig(method="pl", max_steps=2), ReuseArguments(progress=False))
    assert runner.guard_folds() == 0
    report = runner.run_guard(None)
    assert report.decision == "fall_back" and report.trainings == 0 and report.held_out == 0
    assert report.unscored == 3 and "no class has two" in report.reason
    off = ReuseTrainer(None, data, MRLConfig(method="pl"), ReuseArguments(guard_folds=0, progress=False))
    assert off.run_guard(None) is None  # switched off is the only way to skip it


def test_corrected_bound_is_nadeau_bengio():
    losses = [0.10, 0.20, 0.00, 0.10, 0.30, 0.10]
    mean, se, df, upper = corrected_bound(losses, folds=3, confidence=0.95)
    var = torch.tensor(losses, dtype=torch.float64).var().item()
    assert mean == pytest.approx(0.8 / 6)
    assert se == pytest.approx(math.sqrt((1 / 6 + 1 / 2) * var))  # not sqrt(var / 6)
    assert df == 5 and upper == pytest.approx(mean + student_t.ppf(0.95, 5) * se)
    lower = corrected_bound(losses, folds=3, confidence=0.95, upper=False)[3]
    assert lower == pytest.approx(mean - student_t.ppf(0.95, 5) * se)


def _cells(fold_losses: list[list[float]], per_fold: int = 20):
    """(reuse_ok, sup_ok, fold) of `repeats` x `folds` cells whose mean loss (sup - reuse correctness) is given."""
    repeats, folds = len(fold_losses), len(fold_losses[0])
    n = folds * per_fold
    fold = (torch.arange(n) % folds).repeat(repeats, 1)
    sup = torch.ones(repeats, n, dtype=torch.bool)
    reuse = torch.ones(repeats, n, dtype=torch.bool)
    for r in range(repeats):
        for f in range(folds):
            idx = (fold[r] == f).nonzero().flatten()
            wrong = round(fold_losses[r][f] * per_fold)
            if wrong >= 0:
                reuse[r, idx[:wrong]] = False
            else:
                sup[r, idx[:-wrong]] = False
    return reuse, sup, fold


def test_non_inferiority_decision_sign_margin_and_correction():
    # a constant 5-point loss: confidently worse than the 2-point margin
    reuse, sup, fold = _cells([[0.05] * 3] * 2)
    gain, se, z, decision, upper, df = decide(reuse, sup, fold, margin=0.02)
    assert gain == pytest.approx(-0.05) and upper == pytest.approx(0.05) and decision == "fall_back" and z < 0
    # the same pair swapped is a 5-point gain: kept (a flipped sign would fall back here)
    assert decide(sup, reuse, fold, margin=0.02)[3] == "keep"
    # a constant 3-point loss: below a 5-point margin, above a 2-point one (the margin is used)
    reuse, sup, fold = _cells([[0.05, 0.0, 0.05]] * 2)
    assert decide(reuse, sup, fold, margin=0.02)[3] == "fall_back"
    assert decide(reuse, sup, fold, margin=0.10)[3] == "keep"
    # a noisy 10-point gain: kept by the plain t bound but not once corrected for fold dependence
    losses = [[-0.30, 0.05, -0.05], [-0.10, 0.0, -0.20]]
    reuse, sup, fold = _cells(losses)
    flat = [x for row in losses for x in row]
    plain = sum(flat) / 6 + student_t.ppf(0.95, 5) * torch.tensor(flat).double().std().item() / math.sqrt(6)
    gain, se, z, decision, upper, df = decide(reuse, sup, fold, margin=0.02)
    assert plain < 0.02 < upper and decision == "fall_back"
    # a large gain is kept even with noisy folds
    reuse, sup, fold = _cells([[-0.5, -0.4, -0.6], [-0.45, -0.55, -0.5]])
    assert decide(reuse, sup, fold, margin=0.02)[3] == "keep"


def test_latent_clusters_recover_separated_groups():
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0, 5.0], [5.0, 0.0, 0.0], [0.0, 5.0, 0.0]])
    truth = torch.arange(60) % 3
    feats = centres[truth] + 0.3 * torch.randn(60, 3, generator=gen)
    got = latent_clusters(feats, 3, seed=0)
    # the same partition up to names
    pairs = {(int(a), int(b)) for a, b in zip(truth, got, strict=True)}
    assert len(pairs) == 3 and len({b for _, b in pairs}) == 3


def test_harm_confined_to_one_latent_cluster_falls_back():
    # 3 clusters of 20 scored samples; reuse is right everywhere in clusters 0 and 1 where supervised is wrong
    # half the time, and wrong on 12 of cluster 2's 20 where supervised is right: overall reuse gains.
    n, repeats = 60, 2
    clusters = torch.arange(n) // 20
    fold = (torch.arange(n) % 3).repeat(repeats, 1)
    sup = torch.ones(repeats, n, dtype=torch.bool)
    reuse = torch.ones(repeats, n, dtype=torch.bool)
    sup[:, (clusters < 2) & (torch.arange(n) % 2 == 0)] = False
    reuse[:, (clusters == 2) & (torch.arange(n) % 20 < 12)] = False
    plain = guard_report(reuse, sup, fold, margin=0.02)
    assert plain.gain > 0.1 and plain.decision == "keep" and plain.clusters == []
    report = guard_report(reuse, sup, fold, margin=0.02, clusters=clusters)
    assert report.decision == "fall_back" and "cluster" in report.reason
    harmful = [c["cluster"] for c in report.clusters if c["harmful"]]
    assert harmful == [2]
    assert all(c["tested"] for c in report.clusters) and report.clusters[2]["gain"] == pytest.approx(-0.6, abs=0.01)
    # clusters below the minimum size are reported, not tested
    small = guard_report(reuse, sup, fold, margin=0.02, clusters=clusters, min_cluster=25)
    assert small.decision == "keep" and not any(c["tested"] for c in small.clusters)


def _config(**kw):
    base = dict(max_steps=30, batch_size=6, unlabeled_batch_size=16, outer_every=2, learn_reuse_strength=False)
    return MRLConfig(**{**base, **kw})


def test_cross_validation_catches_a_misleading_pool():
    data = _data(n_per_class=6, n_unlabeled=60)
    report = cross_validate_reuse(
        _config(method="mr-bs", kd_lambda=5.0), data, _misleading_reuse(data), TEACHERS, 3, TINY_STUDENT
    )
    assert report.held_out == 18 and report.repeats == 2 and report.trainings == 12
    assert report.method_accuracy < report.supervised_accuracy
    assert report.decision == "fall_back", report
    assert report.loss_upper >= report.margin == 0.02


def test_cross_validation_keeps_a_helpful_pool():
    data = _data(n_per_class=6, n_unlabeled=60)
    misleading = _misleading_reuse(data)
    # The same teachers with their outputs rolled back by one class are always right.
    helpful = type(misleading)(
        *(p.roll(-1, dims=-1) for p in (misleading.probs_l, misleading.probs_u, misleading.probs_t)),
        misleading.feats_l,
        misleading.feats_u,
        misleading.feats_t,
    )
    report = cross_validate_reuse(_config(method="mr-bs", kd_lambda=5.0), data, helpful, TEACHERS, 3, TINY_STUDENT)
    assert report.method_accuracy >= report.supervised_accuracy
    assert report.loss_upper < report.margin  # as good as supervised here: within the margin, kept
    assert report.decision == "keep"
    assert report.to_dict()["decision"] == "keep" and report.to_dict()["margin"] == 0.02


def test_a_precomputed_supervised_side_gives_the_same_report():
    """The supervised side depends on data, folds and config only: computed once, it serves every pool's guard."""
    data = _data(n_per_class=3, n_unlabeled=30)
    config = _config(method="mr-bs", kd_lambda=5.0, max_steps=8)
    reuse = _misleading_reuse(data)
    full = cross_validate_reuse(config, data, reuse, TEACHERS, 3, TINY_STUDENT)
    fold = repeated_folds(data.labeled_labels, 3, 2, seed=config.seed)
    sup = fold_correctness(dataclasses.replace(config, method="supervised"), data, None, None, fold, TINY_STUDENT)
    assert sup.shape == (2, 9)
    shared = cross_validate_reuse(config, data, reuse, TEACHERS, 3, TINY_STUDENT, supervised_correct=sup)
    assert shared == full
    with pytest.raises(ValueError, match=r"shape \(2, 5\)"):
        cross_validate_reuse(config, data, reuse, TEACHERS, 3, TINY_STUDENT, supervised_correct=sup[:, :5])


ORPHANS = """
import json, time
from multiprocessing import resource_tracker
from hf_mrl.guard import _worker_pool

if __name__ == "__main__":  # spawned workers import this file again
    pool = _worker_pool(2, 1)
    futures = [pool.submit(time.sleep, 600) for _ in range(2)]
    while len(pool._processes) < 2:
        time.sleep(0.05)
    time.sleep(2.0)  # the workers are up and sleeping in a job
    tracker = resource_tracker._resource_tracker._pid
    print(json.dumps({"workers": list(pool._processes), "tracker": tracker}), flush=True)
    time.sleep(600)
"""


def test_guard_workers_die_within_10_s_of_a_kill_of_their_parent(tmp_path):
    import json
    import signal
    import subprocess
    import time
    from pathlib import Path

    script = tmp_path / "orphans.py"
    script.write_text(ORPHANS)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE, text=True)
    info = json.loads(proc.stdout.readline())
    pids = [p for p in [*info["workers"], info["tracker"]] if p]
    assert len(info["workers"]) == 2 and all(_alive(p) for p in pids)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    left = [p for p in pids if _alive(p)]
    for p in left:
        os.kill(p, signal.SIGKILL)
    assert not left, f"processes {left} outlived their parent by 10 s"


def _alive(pid: int) -> bool:
    """Running (a zombie, already dead but not yet reaped by init, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# -- the sequential guard (issue 21) ---------------------------------------------------------------------------
def _naive_sample_bound(reuse, sup, fold, looks, confidence=0.95):
    """A bound over the held-out samples of the first looks only (no training variance): the rule that stopped too
    early before. The tests below show data on which it keeps and the sequential guard must not."""
    cells = [(r, f) for r in range(fold.shape[0]) for f in range(int(fold.max()) + 1)][:looks]
    d = torch.cat([(sup[r][fold[r] == f].double() - reuse[r][fold[r] == f].double()) for r, f in cells])
    return d.mean().item() + student_t.ppf(confidence, len(d) - 1) * d.std().item() / math.sqrt(len(d))


def _first_keep(reuse, sup, fold, **kw):
    """(look, report) of the first look that settles."""
    for look in range(1, fold.shape[0] * (int(fold.max()) + 1) + 1):
        report = sequential_look(reuse, sup, fold, look, **kw)
        if report is not None:
            return look, report
    raise AssertionError("the last look must decide")


def test_sequential_guard_does_not_stop_too_early():
    # the first pair is a 50-point gain on 40 held-out samples: a sample-only bound keeps at look 1 ...
    reuse, sup, fold = _cells([[-0.5, -0.05, 0.25], [0.1, 0.0, 0.15]], per_fold=40)
    assert _naive_sample_bound(reuse, sup, fold, 1) < 0.02
    # ... but the folds scatter, and the full evidence is a loss: the sequential guard never keeps
    look, report = _first_keep(reuse, sup, fold)
    assert report.decision == "fall_back" and report.rule == "sequential"
    assert decide(reuse, sup, fold)[3] == "fall_back"  # the full rule agrees
    # a first repeat that gains on average but scatters: the corrected t with 2 df does not keep at its end
    reuse, sup, fold = _cells([[-0.9, -0.85, 0.3], [-0.2, -0.3, -0.1]], per_fold=40)
    assert _naive_sample_bound(reuse, sup, fold, 3) < 0.02
    assert sequential_look(reuse, sup, fold, 3) is None
    # a first repeat that the full rule at 95% would keep: the interim look tests at 98.5% and goes on
    reuse, sup, fold = _cells([[-0.3, -0.2, -0.4], [0.05, 0.1, 0.0]], per_fold=40)
    assert guard_report(reuse[:1], sup[:1], fold[:1]).decision == "keep"
    assert sequential_look(reuse, sup, fold, 3) is None
    assert _first_keep(reuse, sup, fold)[1].decision == "fall_back"
    # and an interim look before the end of a repeat never keeps, however good (one pair is one training draw)
    reuse, sup, fold = _cells([[-0.675, -0.675, -0.675], [-0.675] * 3], per_fold=40)
    assert [sequential_look(reuse, sup, fold, k) for k in (1, 2)] == [None, None]


def test_sequential_guard_stops_early_on_a_clear_gain():
    # the default run's first folds: method 40/40, supervised 13/40 or so
    reuse, sup, fold = _cells([[-0.675, -0.6, -0.7], [-0.65, -0.675, -0.6]], per_fold=40)
    look, report = _first_keep(reuse, sup, fold)
    assert look == 3 and report.decision == "keep" and report.stopped_at == "interim"
    assert report.trainings == 6 < report.trainings_full == 12 and report.looks == 3 and report.max_looks == 6
    assert report.bound_confidence == pytest.approx(1 - 0.3 * 0.05) and report.confidence == 0.95
    assert report.loss_upper < 0.02 and report.gain == pytest.approx(0.65, abs=0.01)
    # swapped (a wrong sign would keep the loss): harm established at the first look, no keep ever
    look, report = _first_keep(sup, reuse, fold)
    assert look == 1 and report.decision == "fall_back" and report.trainings == 2 and "harm" in report.reason


def test_sequential_final_look_is_the_full_rule_at_the_level_left():
    # a close case: kept by the full rule at 95%, and it gets every training; the final look is stricter
    losses = [[-0.05, -0.02, -0.08], [-0.04, -0.06, -0.03]]
    reuse, sup, fold = _cells(losses, per_fold=40)
    look, report = _first_keep(reuse, sup, fold)
    assert look == 6 and report.stopped_at == "final" and report.trainings == 12
    full = guard_report(reuse, sup, fold, confidence=1 - 0.7 * 0.05)
    assert (report.decision, report.loss_upper) == (full.decision, full.loss_upper)
    assert report.loss_upper > guard_report(reuse, sup, fold).loss_upper  # 96.5% is wider than 95%


def _planted_jobs(monkeypatch, reuse_right, sup_right):
    """Replace the fold trainings by planted per-sample correctness (a vector over the labeled samples, or a function
    of the fold's size giving its held-out vector); returns the list of (method, fold) calls."""
    import hf_mrl.guard.workers as workers

    calls = []

    def fake(config, data, reuse, teacher_ids, fold, f, student_spec):
        calls.append((config.method, f))
        right = sup_right if config.method == "supervised" else reuse_right
        if callable(right):
            return right(int((fold == f).sum()))
        return right[fold == f].clone()

    monkeypatch.setattr(workers, "_fold_job", fake)
    return calls


def _a_third(held: int) -> torch.Tensor:
    return torch.arange(held) < held // 3


def test_sequential_guard_cancels_the_trainings_it_no_longer_needs(monkeypatch):
    data = _data(n_per_class=12, n_unlabeled=6)
    n = len(data.labeled_labels)
    # clear harm: the method is always wrong, supervised always right -> fall back after the first pair
    calls = _planted_jobs(monkeypatch, torch.zeros(n, dtype=torch.bool), torch.ones(n, dtype=torch.bool))
    report = cross_validate_reuse(_config(method="pl"), data, None, None, 3, sequential=True)
    assert report.decision == "fall_back" and report.looks == 1 and report.trainings == 2
    assert calls == [("pl", 0), ("supervised", 0)]  # the 10 queued trainings never ran
    # a clear gain: supervised right on a third of every fold -> keep at the end of the first repeat
    calls = _planted_jobs(monkeypatch, torch.ones(n, dtype=torch.bool), _a_third)
    report = cross_validate_reuse(_config(method="pl"), data, None, None, 3, sequential=True)
    assert report.decision == "keep" and report.stopped_at == "interim" and len(calls) == report.trainings == 6
    assert [m for m, _ in calls] == ["pl", "supervised"] * 3 and [f for _, f in calls] == [0, 0, 1, 1, 2, 2]
    # the full design, asked for, trains everything, and records what the sequential rule decided on it
    calls.clear()
    full = cross_validate_reuse(_config(method="pl"), data, None, None, 3)
    assert len(calls) == full.trainings == full.trainings_full == 12 and full.rule == "full" and full.looks == 1
    replay = full.sequential_replay
    assert (replay["decision"], replay["looks"], replay["trainings"]) == (report.decision, report.looks, 6)
    assert replay["loss_upper"] == report.loss_upper


def _sleepy(seconds: float, value: int) -> torch.Tensor:
    import time

    time.sleep(seconds)
    return torch.tensor([value])


def test_settling_terminates_running_trainings_and_skips_queued_ones():
    import time

    from hf_mrl.guard import _run_jobs

    jobs = [(0.2, 1), (120.0, 2), (120.0, 3)]  # the second runs beside the first; the third is queued
    start = time.time()
    out = _run_jobs(jobs, 2, False, "test", on_result=lambda i, ok, bar: i == 0, fn=_sleepy)
    assert time.time() - start < 60  # the 120 s job was terminated, not waited for
    assert out[0].tolist() == [1] and out[1] is None and out[2] is None


_TERMINATED_WITH_A_BAR = """
import time
from tqdm.auto import tqdm
import torch
from hf_mrl.guard import _run_jobs

def job(seconds, value):
    for _ in tqdm(range(2), desc="fold"):  # a worker's bar: tqdm's lock is created here
        pass
    time.sleep(seconds)
    return torch.tensor([value])

if __name__ == "__main__":
    out = _run_jobs([(2.0, 1), (120.0, 2)], 2, False, "test", on_result=lambda i, ok, bar: i == 0, fn=job)
    print("results", out[0].tolist(), out[1])
"""


def test_terminated_workers_leave_no_leaked_semaphores(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "settle.py"
    script.write_text(_TERMINATED_WITH_A_BAR)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "results [1] None" in proc.stdout  # the second job was terminated
    assert "leaked semaphore" not in proc.stderr, proc.stderr


def test_the_report_metrics_and_card_carry_the_cost(monkeypatch, tmp_path):
    import json

    data = _data(n_per_class=12, n_unlabeled=12)
    n = len(data.labeled_labels)
    _planted_jobs(monkeypatch, torch.ones(n, dtype=torch.bool), _a_third)
    config = _config(method="pl", max_steps=2)
    args = ReuseArguments(guard_folds=3, guard_workers=1, progress=False, student=TINY_STUDENT)
    result = ReuseTrainer(None, data, config, args).train()
    guard = result.metrics["guard"]
    assert guard["decision"] == "keep" and guard["rule"] == "sequential" and guard["stopped_at"] == "interim"
    assert (guard["trainings"], guard["trainings_full"], guard["looks"], guard["max_looks"]) == (6, 12, 3, 6)
    assert (
        guard["cost"]
        == "The sequential guard settled at interim look 3 of 6, after 6 of the full design's 12 student trainings."
    )
    result.save_pretrained(tmp_path / "run")
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["guard"]["trainings"] == 6
    card = (tmp_path / "run" / "student" / "README.md").read_text()
    assert guard["cost"] in card and "98.5% upper bound" in card
    off = ReuseTrainer(None, data, config, dataclasses.replace(args, guard_sequential=False)).run_guard(
        result.supervised
    )
    assert off.rule == "full" and off.trainings == 12


def test_the_simulation_implements_the_guards_rule():
    """benchmarks/guard_error.py re-implements the rule vectorised; it must take the same decisions at the same looks."""
    import importlib.util
    from pathlib import Path

    import numpy as np

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "guard_error.py"
    spec = importlib.util.spec_from_file_location("guard_error", path)
    sim = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sim)
    fold = sim.design()
    rng = np.random.default_rng(0)
    seen = set()
    for p_s, p_r, tau in [(0.4, 0.38, 0.2), (0.33, 0.97, 0.05), (0.5, 0.2, 0.1), (0.5, 0.5, 0.0)]:
        reuse, sup = sim.draw(rng, 40, fold, p_s, p_r, tau, 0.5, 0.0)
        keep, looks, _ = sim.sequential_rule(reuse, sup, fold)
        for b in range(len(keep)):
            look, report = _first_keep(torch.from_numpy(reuse[b]), torch.from_numpy(sup[b]), torch.from_numpy(fold))
            assert (look, report.decision == "keep") == (int(looks[b]), bool(keep[b])), (p_s, p_r, tau, b)
            seen.add((look, report.decision))
    assert {(3, "keep"), (1, "fall_back"), (6, "fall_back")} <= seen  # every kind of stop was compared
