"""Every strategy (MRL, the baselines, oracle routing) on the shared student loop."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from test_trainer import LABELS, TEACHERS, TINY_STUDENT, _data, _reuse

from hf_mrl import MRLConfig, StudentTrainer
from hf_mrl.data.augment import strong_augment
from hf_mrl.reuse.outputs import TeacherOutputs
from hf_mrl.training.strategies import METHODS, get_strategy
from hf_mrl.training.strategies.base import StudentEMA
from hf_mrl.training.strategies.mr_cr import fit_global_weights

UNLABELED_KEY = {
    "pl": "pl_loss",
    "mean-teacher": "consistency_loss",
    "vat": "vat_loss",
    "fixmatch": "fixmatch_loss",
    "mr-bs": "kd_loss",
    "mr-cr": "kd_loss",
    "mrl": "kd_loss",
    "oracle": "kd_loss",
}


def _domain_data():
    data = _data()
    return dataclasses.replace(
        data,
        labeled_domains=torch.arange(len(data.labeled_labels)) % 2,
        unlabeled_domains=torch.arange(len(data.unlabeled_images)) % 2,
    )


def _run(method: str, steps: int = 3, data=None, reuse=None, **cfg) -> StudentTrainer:
    data = data or _domain_data()
    reuse = reuse or _reuse(data)
    config = MRLConfig(method=method, max_steps=steps, batch_size=6, unlabeled_batch_size=8, outer_every=2, **cfg)
    trainer = StudentTrainer(config, data, reuse, teacher_ids=TEACHERS, student_spec=TINY_STUDENT)
    trainer.train(progress=False)
    return trainer


def test_unknown_methods_are_refused_by_the_registry_and_the_config():
    with pytest.raises(ValueError, match="Unknown method 'nope'"):
        get_strategy("nope")
    with pytest.raises(ValueError, match=r"method='nope' is unknown; choose one of \('supervised'"):
        MRLConfig(method="nope")


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_with_finite_losses(method):
    trainer = _run(method, confidence_threshold=0.0)
    for logs in trainer.history:
        assert all(math.isfinite(v) for v in logs.values()), logs
    if method == "supervised":
        assert set(trainer.history[0]) == {"ce_loss", "loss"}
    else:
        assert UNLABELED_KEY[method] in trainer.history[0]
    preds = trainer.predict(trainer.data.test_images)
    assert preds.shape == trainer.data.test_labels.shape


@pytest.mark.parametrize("method", ["mr-bs", "mr-cr", "mrl", "oracle"])
def test_teacher_methods_need_teacher_outputs(method):
    with pytest.raises(ValueError, match="needs teacher"):
        StudentTrainer(
            MRLConfig(method=method, max_steps=1), _data(), None, teacher_ids=TEACHERS, student_spec=TINY_STUDENT
        )


def _reuse_where_teacher_is_right(data, good) -> TeacherOutputs:
    """Teacher `good[i]` predicts sample i's class; the other teachers predict the next class."""

    def probs(labels, good_of):
        p = torch.full((len(labels), len(TEACHERS), len(LABELS)), 0.05)
        for i, (y, g) in enumerate(zip(labels.tolist(), good_of.tolist(), strict=True)):
            for k in range(len(TEACHERS)):
                p[i, k, y if k == g else (y + 1) % len(LABELS)] = 0.9
        return p

    y_u = torch.zeros(len(data.unlabeled_images), dtype=torch.long)
    p_l = probs(data.labeled_labels, good(data.labeled_domains))
    p_u = probs(y_u, good(data.unlabeled_domains))
    p_t = probs(data.test_labels, torch.zeros_like(data.test_labels))
    flat = [p.log().flatten(1) for p in (p_l, p_u, p_t)]
    return TeacherOutputs(p_l, p_u, p_t, *flat)


def test_mr_bs_distils_the_teacher_best_on_the_labels():
    data = _domain_data()
    reuse = _reuse_where_teacher_is_right(data, lambda d: torch.full_like(d, 1))
    trainer = StudentTrainer(MRLConfig(method="mr-bs", max_steps=1), data, reuse, student_spec=TINY_STUDENT)
    assert trainer.strategy.teacher == 1
    idx = torch.tensor([0, 3])
    assert torch.equal(trainer.strategy.targets(idx), reuse.probs_u[idx, 1])


def test_mr_cr_weights_favour_the_accurate_teacher():
    data = _domain_data()
    reuse = _reuse_where_teacher_is_right(data, lambda d: torch.zeros_like(d))
    w = fit_global_weights(reuse.probs_l, data.labeled_labels)
    assert w.shape == (len(TEACHERS),)
    assert w.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert w.argmax().item() == 0 and w[0] > 0.8


def test_oracle_routes_each_domain_to_its_teacher():
    data = _domain_data()
    reuse = _reuse_where_teacher_is_right(data, lambda d: d)  # domain d is handled by teacher d
    trainer = StudentTrainer(MRLConfig(method="oracle", max_steps=1), data, reuse, student_spec=TINY_STUDENT)
    assert torch.equal(trainer.strategy.teacher_of, data.unlabeled_domains)
    with pytest.raises(ValueError, match="domain labels"):
        StudentTrainer(MRLConfig(method="oracle", max_steps=1), _data(), reuse, student_spec=TINY_STUDENT)


def test_confidence_threshold_masks_pseudo_labels():
    for method in ("pl", "fixmatch"):
        trainer = _run(method, confidence_threshold=1.0)
        assert all(logs["mask_rate"] == 0.0 for logs in trainer.history)
        key = UNLABELED_KEY[method]
        assert all(logs[key] == 0.0 for logs in trainer.history)


def test_mean_teacher_ema_follows_the_student():
    data = _domain_data()
    config = MRLConfig(method="mean-teacher", max_steps=2, batch_size=6, unlabeled_batch_size=8)
    trainer = StudentTrainer(config, data, None, student_spec=TINY_STUDENT)
    init = {k: v.clone() for k, v in trainer.strategy.ema.state_dict().items()}
    trainer.training_step(0)
    student = trainer.accelerator.unwrap_model(trainer.student).state_dict()
    decay = min(config.ema_decay, 1 / 10)  # the warm-up decay at step 0
    for name, value in trainer.strategy.ema.state_dict().items():
        if value.dtype.is_floating_point:
            expected = decay * init[name] + (1 - decay) * student[name]
            assert torch.allclose(value, expected, atol=1e-6), name
    moved = [k for k, v in student.items() if v.dtype.is_floating_point and not torch.equal(v, init[k])]
    assert moved, "the student did not move in one step"


def test_strong_augment_is_seeded_and_changes_the_images():
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    a = strong_augment(x, torch.Generator().manual_seed(0))
    b = strong_augment(x, torch.Generator().manual_seed(0))
    c = strong_augment(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.allclose(a, x)


def _vat_trainer(**cfg):
    data = _domain_data()
    config = MRLConfig(method="vat", max_steps=2, batch_size=6, unlabeled_batch_size=8, **cfg)
    return StudentTrainer(config, data, None, student_spec=TINY_STUDENT), data


def _bn_buffers(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


def test_vat_divergence_is_zero_at_r0_on_one_input_and_leaves_batchnorm_statistics_alone():
    """The target and the perturbed passes see the same translated input with the same normalisation: at r = 0 the
    divergence is exactly zero (the old code took its target from another translation and a mixed batch). None of
    the extra passes moves a BatchNorm running statistic."""
    trainer, data = _vat_trainer(vat_epsilon=0.0)
    student = trainer.student
    student.train()
    images_u = data.unlabeled_images[:8]
    gen = torch.Generator().manual_seed(0)
    # logits of the trainer's own (other) view of the batch, as the loop passes them
    logits_u = student(trainer.inputs(images_u, torch.Generator().manual_seed(1))).detach()
    before = _bn_buffers(student)
    loss, logs = trainer.strategy.unlabeled_loss(
        logits_u, torch.arange(8), images_u, gen, step=trainer.config.max_steps
    )
    assert logs["vat_loss"] == pytest.approx(0.0, abs=1e-6)
    after = _bn_buffers(student)
    assert before and all(torch.equal(before[k], after[k]) for k in before)


def test_vat_perturbation_has_norm_epsilon_and_raises_the_divergence():
    from hf_mrl.training.strategies.vat import _kl, _unit, frozen_bn_stats, vat_loss

    trainer, data = _vat_trainer()
    student = trainer.student
    student.train()
    x = trainer.inputs(data.unlabeled_images[:8], torch.Generator().manual_seed(0))
    loss, r_adv = vat_loss(student, x, 0.5, torch.Generator().manual_seed(0))
    assert torch.allclose(r_adv.flatten(1).norm(dim=1), torch.full((8,), 0.5), atol=1e-4)
    with frozen_bn_stats(student), torch.no_grad():
        p = student(x).softmax(-1)
        random = [
            _kl(student, x, p, 0.5 * _unit(torch.randn(x.shape, generator=torch.Generator().manual_seed(s))))
            for s in range(5)
        ]
    assert loss.item() > max(r.item() for r in random)  # the adversarial direction beats random ones


def test_mean_teacher_delivers_its_ema_weights():
    data = _domain_data()
    config = MRLConfig(method="mean-teacher", max_steps=3, batch_size=6, unlabeled_batch_size=8)
    trainer = StudentTrainer(config, data, None, student_spec=TINY_STUDENT)
    student = trainer.train(progress=False)
    ema = trainer.strategy.ema.state_dict()
    assert all(torch.equal(v, ema[k]) for k, v in student.state_dict().items())
    # and the EMA differs from the last student iterate (decay > 0), so this is not a no-op
    assert trainer.config.ema_decay > 0


def test_student_ema_update_is_the_warmed_up_average_of_every_state_entry():
    """By hand on a tiny model with BatchNorm: weights and running statistics averaged with the warm-up decay
    min(decay, (step + 1) / (step + 10)), the batch count copied, the average registered for checkpointing."""
    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    registered = []
    accelerator = type("Acc", (), {"unwrap_model": staticmethod(lambda m: m)})()
    trainer = type("Trainer", (), {"student": student, "accelerator": accelerator})()
    trainer.register_for_checkpointing = lambda **objects: registered.extend(objects.values())
    ema = StudentEMA(trainer, decay=0.9)
    assert registered == [ema.model] and not any(p.requires_grad for p in ema.model.parameters())
    init = {k: v.clone() for k, v in student.state_dict().items()}
    assert set(init) == {"0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var",
                         "1.num_batches_tracked"}  # fmt: skip

    def move(scale):
        with torch.no_grad():
            for k, v in student.state_dict().items():
                v.copy_(torch.full_like(v, 7) if not v.dtype.is_floating_point else init[k] + scale)

    move(1.0)
    ema.update(0)  # warm-up: decay 1/10, not 0.9
    for k, v in ema.model.state_dict().items():
        if v.dtype.is_floating_point:
            assert torch.allclose(v, 0.1 * init[k] + 0.9 * (init[k] + 1.0), atol=1e-6), k
        else:
            assert v.item() == 7, k  # copied, not averaged
    after_warmup = {k: v.clone() for k, v in ema.model.state_dict().items()}
    move(3.0)
    ema.update(1000)  # min(0.9, 1001 / 1010) = 0.9
    for k, v in ema.model.state_dict().items():
        if v.dtype.is_floating_point:
            assert torch.allclose(v, 0.9 * after_warmup[k] + 0.1 * (init[k] + 3.0), atol=1e-6), k
    ema.deliver()
    assert all(torch.equal(v, ema.model.state_dict()[k]) for k, v in student.state_dict().items())


def _fixmatch_run(steps: int = 3, **cfg):
    """FixMatch trained by `train()`, with the student's state recorded after every step: (trainer, init, states)."""
    data = _domain_data()
    config = MRLConfig(
        method="fixmatch", max_steps=steps, batch_size=6, unlabeled_batch_size=8, confidence_threshold=0.0, **cfg
    )
    trainer = StudentTrainer(config, data, None, student_spec=TINY_STUDENT)
    unwrap = trainer.accelerator.unwrap_model
    init = {k: v.clone() for k, v in unwrap(trainer.student).state_dict().items()}
    states, step = [], trainer.training_step

    def spy(*args, **kwargs):
        logs = step(*args, **kwargs)
        states.append({k: v.clone() for k, v in unwrap(trainer.student).state_dict().items()})
        return logs

    trainer.training_step = spy
    delivered = trainer.train(progress=False).state_dict()
    return trainer, init, states, delivered


def test_fixmatch_with_eval_ema_delivers_the_average_not_the_last_iterate():
    trainer, init, states, delivered = _fixmatch_run(eval_ema_decay=0.999)
    expected = dict(init)
    for step, state in enumerate(states):
        decay = min(0.999, (step + 1) / (step + 10))
        expected = {
            k: decay * expected[k] + (1 - decay) * v if v.dtype.is_floating_point else v for k, v in state.items()
        }
    for k, v in delivered.items():
        assert torch.allclose(v, expected[k], atol=1e-6), k
    last = states[-1]
    assert any(not torch.allclose(v, last[k]) for k, v in delivered.items() if v.dtype.is_floating_point)
    assert trainer.strategy.eval_ema is not None
    assert trainer._checkpoint_objects()["ema"] is trainer.strategy.eval_ema.model  # resumable


def test_fixmatch_without_eval_ema_delivers_the_last_iterate_and_keeps_no_average():
    trainer, _, states, delivered = _fixmatch_run()
    assert trainer.config.eval_ema_decay == 0.0 and trainer.strategy.eval_ema is None
    assert all(torch.equal(v, states[-1][k]) for k, v in delivered.items())
    assert sorted(trainer._checkpoint_objects()) == ["optimizer", "step", "student"]  # checkpoints as before


def test_a_registered_strategy_brings_its_own_card_text():
    from hf_mrl.hub.cards import METHOD_TEXT, method_text
    from hf_mrl.training.strategies import STRATEGIES, Strategy, register_strategy

    class Echo(Strategy):
        name = "echo-test"
        uses_unlabeled = True
        card_name = "echo"
        card_source = "its own echoes"
        card_how = "echo: the student hears itself."

    class Mute(Strategy):
        name = "mute-test"

    try:
        assert register_strategy(Echo) is Echo and STRATEGIES["echo-test"] is Echo
        text = method_text("echo-test")
        assert (text.name, text.source, text.how) == ("echo", "its own echoes", "echo: the student hears itself.")
        assert (text.teachers, text.unlabeled) == (False, True)  # from the strategy's flags: no second registry
        from hf_mrl import MRLConfig
        from hf_mrl.cli.train import train_parser

        assert MRLConfig(method="echo-test").method == "echo-test"  # a method now, for the config and the CLI
        assert train_parser().parse_args(["--output_dir", "x", "--method", "echo-test"]).method == "echo-test"
        with pytest.raises(TypeError, match=r"Mute \('mute-test'\) has no card text"):
            register_strategy(Mute)
        assert "mute-test" not in STRATEGIES and "mute-test" not in METHOD_TEXT
    finally:
        STRATEGIES.pop("echo-test", None)
        METHOD_TEXT.pop("echo-test", None)
