"""The bi-level trainer on tiny tensors: steps, outer updates, validation, checkpoint / resume."""

from __future__ import annotations

import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from helpers import make_labeled_images, make_timm_teacher, make_transformers_teacher

from hf_mrl import Embedding, ModelPool, MRLConfig, StudentTrainer, TargetData, compute_teacher_outputs
from hf_mrl.reuse.outputs import TeacherOutputs
from hf_mrl.training.trainer import _translate, kd_loss, latest_checkpoint

LABELS = ["a", "b", "c"]
TEACHERS = ["org/t0@c0", "org/t1@c1"]
# A narrow ResNet-10 keeps a step in the tens of milliseconds on 2 cores.
TINY_STUDENT = {"architecture": "resnet10t", "model_args": {"channels": [8, 8, 16, 16], "stem_width": 8}}


def _data(n_per_class: int = 3, n_unlabeled: int = 30, n_test: int = 12) -> TargetData:
    y_l = torch.arange(n_per_class * 3) % 3
    y_u = torch.arange(n_unlabeled) % 3
    y_t = torch.arange(n_test) % 3
    return TargetData(
        label_names=list(LABELS),
        labeled_images=make_labeled_images(y_l, seed=0),
        labeled_labels=y_l,
        unlabeled_images=make_labeled_images(y_u, seed=1),
        test_images=make_labeled_images(y_t, seed=2),
        test_labels=y_t,
    )


def _reuse(data: TargetData, seed: int = 0) -> TeacherOutputs:
    gen = torch.Generator().manual_seed(seed)

    def probs(n):
        return torch.softmax(2 * torch.randn(n, len(TEACHERS), len(LABELS), generator=gen), dim=-1)

    p_l, p_u, p_t = probs(len(data.labeled_labels)), probs(len(data.unlabeled_images)), probs(len(data.test_images))
    emb = Embedding("teacher-outputs")
    return TeacherOutputs(p_l, p_u, p_t, emb(None, p_l), emb(None, p_u), emb(None, p_t))


def _config(**kwargs) -> MRLConfig:
    base = {"max_steps": 4, "batch_size": 6, "unlabeled_batch_size": 8, "outer_every": 2, "seed": 0}
    return MRLConfig(**{**base, **kwargs})


def _trainer(config: MRLConfig, data: TargetData | None = None, reuse: TeacherOutputs | None = None) -> StudentTrainer:
    data = data or _data()
    if config.method == "mrl" and reuse is None:
        reuse = _reuse(data)
    ids = TEACHERS if config.method == "mrl" else None
    return StudentTrainer(config, data, reuse, teacher_ids=ids, student_spec=TINY_STUDENT)


def _student_state(trainer: StudentTrainer) -> dict[str, torch.Tensor]:
    model = trainer.accelerator.unwrap_model(trainer.student)
    return {n: t.detach().clone() for n, t in model.state_dict().items()}


# ----------------------------------------------------------------------------------------------- steps


def test_mrl_steps_return_finite_losses_and_update_prototypes_on_outer_steps():
    trainer = _trainer(_config())
    protos0 = trainer.strategy.reuser.prototypes.detach().clone()
    student0 = _student_state(trainer)

    logs = trainer.training_step(0)  # not an outer step (outer_every=2)
    assert set(logs) == {"loss", "ce_loss", "kd_loss", "reuse_strength"}
    assert all(math.isfinite(v) for v in logs.values())
    distill = trainer.config.kd_lambda * logs["reuse_strength"] * logs["kd_loss"]
    assert logs["loss"] == pytest.approx(logs["ce_loss"] + distill, rel=1e-5)
    assert torch.equal(trainer.strategy.reuser.prototypes.detach(), protos0)
    assert any(not torch.equal(student0[n], t) for n, t in _student_state(trainer).items())

    before = [p.detach().clone() for p in trainer.strategy.outer_params]
    grads = _spy_hypergradients(trainer)
    logs = trainer.training_step(1)  # an outer step
    assert set(logs) == {"loss", "ce_loss", "kd_loss", "reuse_strength", "outer_loss"}
    assert all(math.isfinite(v) for v in logs.values())
    assert torch.isfinite(trainer.strategy.reuser.prototypes).all()
    _assert_first_adam_step_descends(trainer, before, grads[0])


def _spy_hypergradients(trainer) -> list:
    """Record what `strategy.hypergradient` returns (its gradients) on every call."""
    seen, original = [], trainer.strategy.hypergradient

    def spy(*args):
        result = original(*args)
        seen.append([g.detach().clone() for g in result[0]])
        return result

    trainer.strategy.hypergradient = spy
    return seen


def _assert_first_adam_step_descends(trainer, before, grads):
    """Adam's first step moves each outer variable by -lr * g / (|g| + eps): against the hypergradient's sign,
    by the learning rate, wherever the gradient is not tiny (a flipped sign or a dropped gradient fails here)."""
    lr = trainer.config.outer_lr
    moved = 0
    for p0, p, g in zip(before, trainer.strategy.outer_params, grads, strict=True):
        delta, big = p.detach() - p0, g.abs() > 1e-5
        torch.testing.assert_close(delta[big], -lr * g[big].sign(), rtol=1e-3, atol=1e-6)
        moved += int(big.sum())
    assert moved > 0


def test_train_runs_to_max_steps_and_predicts():
    trainer = _trainer(_config(max_steps=4))
    student = trainer.train(progress=False)
    assert trainer.step.value == 4
    assert len(trainer.history) == 4
    assert ["outer_loss" in h for h in trainer.history] == [False, True, False, True]
    assert all(math.isfinite(v) for h in trainer.history for v in h.values())
    assert isinstance(student, torch.nn.Module) and not hasattr(student, "module")
    preds = trainer.predict(trainer.data.test_images, batch_size=5)  # batches that do not divide N
    assert preds.shape == (12,) and preds.dtype == torch.int64
    assert ((preds >= 0) & (preds < 3)).all()
    reuse = trainer.strategy.reuse_predictions("test")
    assert reuse["predictions"].shape == (12,) and reuse["weights"].shape == (12, 2)
    torch.testing.assert_close(reuse["weights"].sum(-1), torch.ones(12))


def test_supervised_needs_no_teachers():
    trainer = _trainer(_config(method="supervised", max_steps=3))
    assert trainer.strategy.reuser is None
    trainer.train(progress=False)
    assert [set(h) for h in trainer.history] == [{"loss", "ce_loss"}] * 3
    assert all(h["loss"] == h["ce_loss"] and math.isfinite(h["loss"]) for h in trainer.history)


def test_mrl_without_teacher_outputs_is_refused():
    with pytest.raises(ValueError, match="teacher"):
        StudentTrainer(_config(), _data(), None, teacher_ids=TEACHERS, student_spec=TINY_STUDENT)
    with pytest.raises(ValueError, match="teacher"):
        StudentTrainer(_config(), _data(), _reuse(_data()), teacher_ids=None, student_spec=TINY_STUDENT)


def test_without_kd_and_direct_term_the_prototypes_get_no_signal():
    """kd_lambda=0 cuts the only path from phi to the student, so the hypergradient is zero."""
    trainer = _trainer(_config(kd_lambda=0.0, direct_weight=0.0))
    protos0 = trainer.strategy.reuser.prototypes.detach().clone()
    bias0 = trainer.strategy.reuser.bias.detach().clone()
    trainer.train(progress=False)
    assert all(h["loss"] == pytest.approx(h["ce_loss"]) for h in trainer.history)
    assert "outer_loss" in trainer.history[1]
    assert torch.equal(trainer.strategy.reuser.prototypes.detach(), protos0)
    assert torch.equal(trainer.strategy.reuser.bias.detach(), bias0)


def test_direct_term_alone_moves_the_prototypes_down_its_gradient():
    """With kd_lambda = 0 the hypergradient is the direct term's own gradient, recomputed here from the outer
    batch; the outer step descends it."""
    trainer = _trainer(_config(kd_lambda=0.0, direct_weight=1.0))
    trainer.training_step(0)
    strategy, step = trainer.strategy, 1
    _, idx_o, _ = trainer.batch_indices(step, stream=1 + trainer.config.unroll_steps)
    y_o = trainer.data.labeled_labels[idx_o]
    direct = F.nll_loss(strategy.reuse_targets(idx_o, labeled=True).clamp_min(1e-8).log(), y_o)
    expected = torch.autograd.grad(direct, strategy.outer_params, allow_unused=True)
    expected = [torch.zeros_like(p) if g is None else g for p, g in zip(strategy.outer_params, expected, strict=True)]
    before = [p.detach().clone() for p in strategy.outer_params]
    grads = _spy_hypergradients(trainer)
    trainer.training_step(step)
    assert _flat(expected).abs().max() > 1e-4
    torch.testing.assert_close(_flat(grads[0]), _flat(expected), rtol=1e-4, atol=1e-7)
    _assert_first_adam_step_descends(trainer, before, expected)
    after = F.nll_loss(strategy.reuse_targets(idx_o, labeled=True).clamp_min(1e-8).log(), y_o)
    assert after.item() < direct.item()  # and the direct loss on that batch went down


def test_reuser_is_initialised_from_the_labeled_data():
    data = _data()
    reuse = _reuse(data)
    trainer = _trainer(_config(), data, reuse)
    assert trainer.strategy.reuser.teachers == TEACHERS
    assert trainer.strategy.reuser.embed_dim == len(TEACHERS) * len(LABELS)
    torch.testing.assert_close(trainer.strategy.reuser.psi_mean, reuse.feats_u.mean(0))
    owner = reuse.probs_l[torch.arange(len(data.labeled_labels)), :, data.labeled_labels].argmax(-1)
    for k in range(len(TEACHERS)):
        if (owner == k).any():
            expected = trainer.strategy.reuser.standardize(reuse.feats_l[owner == k]).mean(0)
            torch.testing.assert_close(trainer.strategy.reuser.prototypes[k].detach(), expected)


def test_same_seed_same_run_and_other_seed_another():
    a, b, c = (_trainer(_config(max_steps=2, seed=s)) for s in (0, 0, 1))
    for t in (a, b, c):
        t.train(progress=False)
    sa, sb, sc = _student_state(a), _student_state(b), _student_state(c)
    assert all(torch.equal(sa[n], sb[n]) for n in sa)
    assert any(not torch.equal(sa[n], sc[n]) for n in sa if sa[n].is_floating_point())


def test_with_real_teachers_through_compute_reuse_inputs(tmp_path):
    tr = make_transformers_teacher(tmp_path / "tr", ["c", "b", "a"], seed=0)
    tm = make_timm_teacher(tmp_path / "tm", ["a", "b"], seed=1)
    data = _data()
    pool = ModelPool([str(tr), str(tm)], LABELS)
    reuse = compute_teacher_outputs(pool, Embedding("teacher-outputs"), data)
    assert reuse.probs_l.shape == (9, 2, 3) and reuse.probs_u.shape == (30, 2, 3) and reuse.probs_t.shape == (12, 2, 3)
    assert reuse.feats_u.shape == (30, 6)
    assert [t.samples_seen for t in pool.teachers] == [9 + 30 + 12] * 2
    trainer = StudentTrainer(_config(), data, reuse, teacher_ids=pool.ids, student_spec=TINY_STUDENT)
    trainer.train(progress=False)
    assert trainer.strategy.reuser.teachers == pool.ids
    assert all(math.isfinite(v) for h in trainer.history for v in h.values())


def test_default_student_trains():
    data = _data()
    trainer = StudentTrainer(_config(max_steps=2), data, _reuse(data), teacher_ids=TEACHERS)
    trainer.train(progress=False)
    assert all(math.isfinite(v) for h in trainer.history for v in h.values())
    assert trainer.accelerator.unwrap_model(trainer.student).pretrained_cfg["label_names"] == LABELS


# ----------------------------------------------------------------------------------------------- pieces


def test_kd_loss():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    for t in (1.0, 2.0):
        target = torch.softmax(logits / t, -1)
        assert kd_loss(logits, target, t).abs() < 1e-6
    target = torch.tensor([[0.1, 0.8, 0.1], [0.3, 0.3, 0.4]])
    expected = 4.0 * torch.nn.functional.kl_div(torch.log_softmax(logits / 2.0, -1), target, reduction="batchmean")
    torch.testing.assert_close(kd_loss(logits, target, 2.0), expected)
    # One-hot targets (zeros in the target) stay finite.
    assert torch.isfinite(kd_loss(logits, torch.eye(3)[:2], 2.0))


def test_translate_shifts_with_zero_padding():
    images = torch.rand(6, 3, 8, 8) + 1.0  # strictly positive, so padding is recognisable
    out = _translate(images, torch.Generator().manual_seed(0), max_shift=2)
    assert out.shape == images.shape
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    shifts = set()
    for i in range(6):
        matches = [
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if torch.equal(out[i], padded[i, :, dy : dy + 8, dx : dx + 8])
        ]
        assert len(matches) == 1
        shifts.add(matches[0])
    assert len(shifts) > 1  # per-sample shifts


def test_fast_cpu_pooling_matches_max_pool_bit_for_bit():
    """The trainer's max pools (`fast_cpu_pooling`): outputs, gradients and JVPs equal nn.MaxPool2d's exactly, ties
    (a ReLU's zeros, repeated values) and NaNs included."""
    from hf_mrl.training.student import _CpuMaxPool2d, fast_cpu_pooling

    plain = torch.nn.MaxPool2d(3, 2, 1)
    fast = fast_cpu_pooling(torch.nn.Sequential(torch.nn.MaxPool2d(3, 2, 1)))[0]
    assert isinstance(fast, _CpuMaxPool2d)
    gen = torch.Generator().manual_seed(0)
    x = (2 * torch.randn(4, 5, 9, 10, generator=gen)).round().clamp_min(0)
    x[0, 0, 1, :4] = float("nan")
    grad_out = torch.randn(4, 5, 5, 5, generator=gen)
    outs, grads = [], []
    for pool in (plain, fast):
        xi = x.clone().requires_grad_(True)
        out = pool(xi)
        outs.append(out.detach())
        grads.append(torch.autograd.grad(out, xi, grad_out)[0])
        assert out.is_contiguous() and grads[-1].is_contiguous()
    assert torch.equal(outs[0].nan_to_num(-1.0), outs[1].nan_to_num(-1.0))
    assert torch.equal(grads[0], grads[1])
    tangent = torch.randn(x.shape, generator=gen)
    jvps = [torch.func.jvp(pool, (x.nan_to_num(0.0),), (tangent,))[1] for pool in (plain, fast)]
    assert torch.equal(jvps[0], jvps[1])


# ----------------------------------------------------------------------------------------------- validation


def test_target_data_validation():
    y = torch.tensor([0, 1, 2])
    images = make_labeled_images(y)
    kwargs = {"unlabeled_images": images, "test_images": images, "test_labels": y}
    with pytest.raises(ValueError, match="labeled set is empty"):
        TargetData(LABELS, images[:0], y[:0], **kwargs)
    with pytest.raises(ValueError, match=r"\['c'\] have no labeled sample"):
        TargetData(LABELS, images[:2], y[:2], **kwargs)
    with pytest.raises(ValueError, match="unlabeled set is empty"):
        TargetData(LABELS, images, y, images[:0], images, y)
    with pytest.raises(ValueError, match="differ in length"):
        TargetData(LABELS, images[:2], y, **kwargs)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        TargetData(LABELS, make_labeled_images([0, 1, 2, 0]), torch.tensor([0, 1, 2, 3]), **kwargs)


# ----------------------------------------------------------------------------------------------- checkpoints


def test_resume_reaches_the_same_state_as_an_uninterrupted_run(tmp_path):
    config = _config(max_steps=6, checkpoint_every=3, outer_every=2)
    full = _trainer(config)
    full.train(checkpoint_dir=tmp_path / "ckpt", progress=False)
    names = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert names == ["step_0000003", "step_0000006"]

    shutil.rmtree(tmp_path / "ckpt" / "step_0000006")  # as if interrupted after step 3
    assert latest_checkpoint(tmp_path / "ckpt").name == "step_0000003"
    resumed = _trainer(config)
    assert any(  # a fresh trainer does not start where the interrupted run stopped
        not torch.equal(a, b)
        for a, b in zip(
            resumed.strategy.reuser.state_dict().values(), full.strategy.reuser.state_dict().values(), strict=True
        )
    )
    resumed.train(checkpoint_dir=tmp_path / "ckpt", resume=True, progress=False)
    assert resumed.step.value == 6
    assert len(resumed.history) == 3  # only steps 4..6 ran

    s_full, s_res = _student_state(full), _student_state(resumed)
    assert s_full.keys() == s_res.keys()
    for name in s_full:
        torch.testing.assert_close(s_res[name], s_full[name], rtol=0, atol=1e-6, msg=name)
    for name, value in full.strategy.reuser.state_dict().items():
        torch.testing.assert_close(resumed.strategy.reuser.state_dict()[name], value, rtol=0, atol=1e-6, msg=name)
    for a, b in zip(full.history[3:], resumed.history, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-6)


def test_resume_without_a_checkpoint_starts_from_scratch(tmp_path):
    trainer = _trainer(_config(max_steps=2))
    trainer.train(checkpoint_dir=tmp_path / "none-yet", resume=True, progress=False)
    assert trainer.step.value == 2 and len(trainer.history) == 2


def test_latest_checkpoint_ignores_unfinished_and_foreign_folders(tmp_path):
    assert latest_checkpoint(tmp_path / "missing") is None
    for name in ("step_0000002", "step_0000010", "step_0000011.tmp", "notes"):
        (tmp_path / name).mkdir()
    (tmp_path / "step_0000099").write_text("a file, not a checkpoint")
    assert latest_checkpoint(tmp_path).name == "step_0000010"


def _misleading_reuse(data: TargetData) -> TeacherOutputs:
    """Every teacher confidently predicts the next class: distilling them can only hurt."""

    def probs(labels):
        p = torch.full((len(labels), len(TEACHERS), len(LABELS)), 0.01)
        p[torch.arange(len(labels)), :, (labels + 1) % len(LABELS)] = 0.98
        return p

    y_u = torch.arange(len(data.unlabeled_images)) % 3  # the unlabeled images' true classes (see _data)
    p_l, p_u, p_t = probs(data.labeled_labels), probs(y_u), probs(data.test_labels)
    emb = Embedding("teacher-outputs")
    return TeacherOutputs(p_l, p_u, p_t, emb(None, p_l), emb(None, p_u), emb(None, p_t))


def test_reuse_strength_turns_down_when_the_pool_misleads():
    data = _data()
    config = _config(max_steps=80, outer_every=1, outer_lr=0.1, direct_weight=0.0)
    trainer = _trainer(config, data, _misleading_reuse(data))
    assert trainer.strategy.reuse_strength == pytest.approx(0.95)
    trainer.train(progress=False)
    assert trainer.strategy.reuse_strength < 0.5


def test_reuse_strength_stays_fixed_when_not_learned():
    trainer = _trainer(_config(learn_reuse_strength=False, reuse_strength_init=0.5))
    trainer.train(progress=False)
    assert trainer.strategy.reuse_strength == pytest.approx(0.5)


# ----------------------------------------------------------------------------------------------- hypergradient


def _flat(grads):
    return torch.cat([g.flatten() for g in grads])


@pytest.mark.parametrize("mode, rtol", [("jvp", 1e-4), ("fd", 2e-2)])
def test_first_order_hypergradients_match_the_unrolled_one_on_the_same_batches(mode, rtol):
    results = {}
    for m in ("unrolled", mode):
        trainer = _trainer(_config(hypergradient=m, batch_size=12, unlabeled_batch_size=16))
        for s in (0, 2, 4):  # no outer step on even steps (outer_every=2): the same student for both
            trainer.training_step(s)
        grads, outer = trainer.strategy.hypergradient(7)
        results[m] = (_flat(grads), outer.item())
    expected, got = results["unrolled"][0], results[mode][0]
    assert expected.abs().max() > 1e-4
    assert results[mode][1] == pytest.approx(results["unrolled"][1], rel=1e-6)
    assert ((got - expected).norm() / expected.norm()).item() < rtol


@pytest.mark.parametrize("mode, rtol", [("fd", 2e-2), ("jvp", 1e-4)])
def test_the_default_outer_step_differentiates_through_the_training_step_itself(mode, rtol):
    """Fused: the unrolled step is the training step (its batch, augmentation and gradient), not another batch.
    `fd` is the default (`MRLConfig.hypergradient`); `jvp` its exact variant."""
    from hf_mrl.training.hypergrad import functional_student, unrolled_hypergradient

    assert MRLConfig().hypergradient == "fd"
    trainer = _trainer(_config(hypergradient=mode, outer_every=1, batch_size=12, unlabeled_batch_size=16))
    trainer.training_step(0)
    cfg, step = trainer.config, 1
    model = trainer.accelerator.unwrap_model(trainer.student)
    params, call = functional_student(model)
    gen, idx_l, idx_u = trainer.batch_indices(step)  # the training batch, drawn as training_step draws it
    x_l = trainer.inputs(trainer.data.labeled_images[idx_l], gen)
    x_u = trainer.inputs(trainer.data.unlabeled_images[idx_u], gen)
    gen_o, idx_o, _ = trainer.batch_indices(step, stream=2)
    x_o, y_o = trainer.inputs(trainer.data.labeled_images[idx_o], gen_o), trainer.data.labeled_labels[idx_o]

    def inner(theta, t):
        z = call(theta, torch.cat([x_l, x_u]))
        kd = kd_loss(z[len(x_l) :], trainer.strategy.reuse_targets(idx_u), cfg.kd_temperature)
        return F.cross_entropy(z[: len(x_l)], trainer.data.labeled_labels[idx_l]) + trainer.strategy.reuse_gate() * kd

    def outer(theta):
        r = trainer.strategy.reuse_targets(idx_o, labeled=True)
        return F.cross_entropy(call(theta, x_o), y_o) + F.nll_loss(r.clamp_min(1e-8).log(), y_o)

    model.train()
    expected, _ = unrolled_hypergradient(params, inner, outer, trainer.strategy.outer_params, cfg.inner_lr, 1)
    seen = []
    original = trainer.strategy.hypergradient

    def spy(*args):
        seen.append(args)
        result = original(*args)
        seen.append(result)
        return result

    trainer.strategy.hypergradient = spy
    logs = trainer.training_step(step)
    assert "outer_loss" in logs and len(seen) == 2 and len(seen[0]) == 2  # called once, with the step's batch
    got = _flat(seen[1][0])
    assert _flat(expected).abs().max() > 1e-4
    assert ((got - _flat(expected)).norm() / _flat(expected).norm()).item() < rtol


def test_unroll_steps_above_one_need_the_unrolled_hypergradient():
    with pytest.raises(ValueError, match="hypergradient='unrolled'"):
        MRLConfig(unroll_steps=2)
    with pytest.raises(ValueError, match="hypergradient"):
        MRLConfig(hypergradient="exact")
    trainer = _trainer(_config(hypergradient="unrolled", unroll_steps=2))
    trainer.train(progress=False)
    assert torch.isfinite(trainer.strategy.reuser.prototypes).all()


# ----------------------------------------------------------------------------------------------- routing

ROUTING_RATE = (
    0.85  # the stated bar: share of Digits-LD MUS test images whose top attention weight is their domain's teacher
)


def _domain_experts(labels: torch.Tensor, domains: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """(N, k, 10) outputs of k simulated domain experts: teacher d is right (0.9) on domain d and confidently wrong
    (0.9 on a seeded wrong class) elsewhere, so only routing by domain makes reuse pay."""
    gen = torch.Generator().manual_seed(seed)
    n = len(labels)
    p = torch.full((n, k, 10), 0.1 / 9)
    for t in range(k):
        wrong = (labels + 1 + torch.randint(0, 9, (n,), generator=gen)) % 10
        cls = torch.where(domains == t, labels, wrong)
        p[torch.arange(n), t, cls] = 0.9
    return p


def test_mrl_attention_routes_digits_ld_domains_to_their_teachers(tmp_path, monkeypatch):
    """On Digits-LD MUS (real images, 10 labels per class) with one expert teacher per latent domain, MRL's
    attention (pixel embedding, labeled initialisation, bi-level steps) sends at least ROUTING_RATE of the test
    images to their own domain's teacher. The experts' outputs are simulated from the domain labels (a real
    Digits-LD pool takes minutes to train); the images, domains, embedding and training are the product's."""
    from hf_mrl.data.target import load_target

    monkeypatch.setenv("HF_MRL_CACHE", str(tmp_path / "cache"))
    data, _ = load_target("digits-ld:MUS", 10, 0)
    k = len(data.domain_names)
    emb = Embedding("pixels")
    sets = {
        "l": (data.labeled_images, data.labeled_labels, data.labeled_domains),
        "u": (data.unlabeled_images, data.unlabeled_labels, data.unlabeled_domains),
        "t": (data.test_images, data.test_labels, data.test_domains),
    }
    probs = {s: _domain_experts(y, d, k, seed=i) for i, (s, (_, y, d)) in enumerate(sets.items())}
    feats = {s: emb(x, probs[s]) for s, (x, _, _) in sets.items()}
    reuse = TeacherOutputs(probs["l"], probs["u"], probs["t"], feats["l"], feats["u"], feats["t"])
    config = MRLConfig(method="mrl", embedding="pixels", max_steps=20, batch_size=32, unlabeled_batch_size=64)
    trainer = StudentTrainer(config, data, reuse, teacher_ids=[f"expert-{d}" for d in data.domain_names])
    trainer.train(progress=False)
    weights = trainer.strategy.reuse_predictions("test")["weights"]
    routed = (weights.argmax(-1) == data.test_domains).float()
    per_domain = [routed[data.test_domains == d].mean().item() for d in range(k)]
    assert routed.mean().item() >= ROUTING_RATE, per_domain
    assert min(per_domain) >= ROUTING_RATE - 0.15, per_domain  # no domain left to the wrong teacher
