"""`outer_labels="heldout"`: the outer objective is scored on a labeled fold the inner CE has not trained on."""

from __future__ import annotations

import math

import pytest
import torch
from test_trainer import _config, _data, _reuse, _trainer

from hf_mrl import MRLConfig
from hf_mrl.training.strategies.mrl import label_folds


def test_label_folds_partition_the_labels_interleave_classes_and_follow_the_seed():
    labels = torch.arange(20) % 10  # 2 labels per class
    folds = label_folds(labels, 5, seed=3)
    flat = torch.cat(folds)
    assert len(folds) == 5 and sorted(flat.tolist()) == list(range(20))  # disjoint, covering
    assert all(len(f) == 4 for f in folds)
    assert all(len(set(labels[f].tolist())) == 4 for f in folds)  # 4 labels of 4 classes, never 2 of one
    assert all(torch.equal(a, b) for a, b in zip(folds, label_folds(labels, 5, seed=3), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(folds, label_folds(labels, 5, seed=4), strict=True))
    assert len(label_folds(torch.tensor([0, 1, 0]), 5, seed=0)) == 3  # at most one fold per label
    with pytest.raises(ValueError, match="at least 2"):
        label_folds(torch.tensor([0]), 5, seed=0)


@pytest.mark.parametrize(
    "field, value",
    [("outer_labels", "test"), ("outer_folds", 1), ("prototype_init", "zeros")],
)
def test_config_refuses_bad_outer_fields(field, value):
    with pytest.raises(ValueError, match=field):
        MRLConfig(**{field: value})


def _spy(trainer):
    """Record, per training step, the labeled rows that reach the inner CE and those that score the outer step.

    Reads what the trainer actually feeds the student (`trainer.inputs` on raw images, matched back to labeled rows),
    so it fails whatever path a leak takes: the first `inputs` call of a step is its labeled batch, and the labeled
    call made while the outer step is prepared is the outer batch.
    """
    images = trainer.data.labeled_images.flatten(1)
    seen: dict[int, dict[str, list[int]]] = {}
    state = {"step": None, "calls": 0}
    inputs, step_fn = trainer.inputs, trainer.training_step

    def rows(batch):
        flat = batch.flatten(1)
        if flat.shape[1] != images.shape[1]:
            return None
        match = (flat[:, None, :] == images[None]).all(-1)  # (B, n)
        return match.float().argmax(1).tolist() if match.any(1).all() else None

    def spy_inputs(batch, gen):
        found = rows(batch)
        entry = seen.setdefault(state["step"], {"inner": [], "outer": []})
        if found is not None and state["calls"] == 0:
            entry["inner"] += found
        elif found is not None:
            entry["outer"] += found
        state["calls"] += 1
        return inputs(batch, gen)

    def spy_step(step):
        state.update(step=step, calls=0)
        return step_fn(step)

    trainer.inputs, trainer.training_step = spy_inputs, spy_step
    return seen


def _data_distinct():
    data = _data(n_per_class=4, n_unlabeled=30)  # 12 labels: 3 folds of 4
    # Labeled rows must be tellable apart from each other and from unlabeled rows.
    assert len({tuple(r.flatten().tolist()) for r in data.labeled_images}) == len(data.labeled_labels)
    return data


def test_heldout_fold_never_reaches_the_inner_ce_and_is_all_the_outer_step_sees():
    data = _data_distinct()
    cfg = _config(max_steps=12, outer_every=2, outer_labels="heldout", outer_folds=3, augment=False)
    trainer = _trainer(cfg, data=data)
    seen = _spy(trainer)
    for step in range(cfg.max_steps):
        trainer.training_step(step)
    folds = trainer.strategy.folds
    assert len(folds) == 3
    used_outer = set()
    for step in range(cfg.max_steps):
        held = set(folds[(step // cfg.outer_every) % 3].tolist())
        inner, outer = seen[step]["inner"], seen[step]["outer"]
        assert len(inner) == cfg.batch_size and not held & set(inner), (step, held, inner)
        if (step + 1) % cfg.outer_every == 0:
            assert len(outer) == cfg.batch_size and set(outer) <= held, (step, held, outer)
            used_outer |= set(outer)
        else:
            assert outer == []
    assert used_outer == set(range(len(data.labeled_labels)))  # over the rotation, every label scores the outer step
    assert set().union(*(seen[s]["inner"] for s in seen)) == set(range(len(data.labeled_labels)))


def test_shared_outer_labels_keep_the_old_batches():
    data = _data_distinct()
    shared = _trainer(_config(max_steps=4, outer_every=2, augment=False), data=data)
    assert shared.strategy.folds is None and shared.strategy.heldout_fold(0) is None
    assert shared.batch_indices.__func__ is type(shared).batch_indices  # the trainer's own batches, untouched
    gen, idx_l, _ = shared.strategy.outer_batch_indices(1)
    assert torch.equal(idx_l, type(shared).batch_indices(shared, 1, stream=2)[1])


def test_heldout_batches_are_a_function_of_seed_stream_and_step():
    data = _data_distinct()
    cfg = _config(max_steps=6, outer_labels="heldout", outer_folds=3)
    a, b = _trainer(cfg, data=data, reuse=_reuse(data)), _trainer(cfg, data=data, reuse=_reuse(data))
    for step in (0, 3, 5):
        for stream in (0, 1):
            assert torch.equal(a.batch_indices(step, stream)[1], b.batch_indices(step, stream)[1])
        assert torch.equal(a.strategy.outer_batch_indices(step)[1], b.strategy.outer_batch_indices(step)[1])
    b.training_step(0)  # training one trainer does not move the other's batches
    assert torch.equal(a.batch_indices(4)[1], b.batch_indices(4)[1])


def test_heldout_training_changes_the_outer_variables_and_logs_their_movement_at_the_end():
    cfg = _config(max_steps=4, outer_every=2, outer_labels="heldout", outer_folds=3, outer_lr=0.1)
    trainer = _trainer(cfg, data=_data_distinct())
    p0 = trainer.strategy.reuser.prototypes.detach().clone()
    logs = [trainer.training_step(s) for s in range(cfg.max_steps)]
    assert "outer_loss" in logs[1] and "proto_l2_from_init" not in logs[1]
    last = logs[-1]
    moved = (trainer.strategy.reuser.prototypes.detach() - p0).norm(dim=1).mean().item()
    assert last["proto_l2_from_init"] == pytest.approx(moved) and moved > 0
    assert 0 < last["proto_cos_to_init"] < 1 + 1e-6 and math.isfinite(last["proto_rel_l2_from_init"])
