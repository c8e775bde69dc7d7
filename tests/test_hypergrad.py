"""The unrolled hypergradient against central finite differences, in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hf_mrl.training.hypergrad import first_order_hypergradient, functional_student, unrolled_hypergradient
from hf_mrl.training.trainer import kd_loss

K, PDIM, C, D = 3, 2, 3, 4  # teachers, embedding dim, classes, input features
LAMBDA, T, ALPHA, TAU = 0.7, 2.0, 0.5, 1.3


def _problem(seed: int = 0):
    """A linear student, reuser-like hyperparameters (P, b), and fixed data in float64."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    torch.manual_seed(seed)
    student = torch.nn.Linear(D, C).double()
    prototypes = randn(K, PDIM).requires_grad_(True)
    bias = (0.3 * randn(K)).requires_grad_(True)
    data = {
        "x_l": [randn(6, D) for _ in range(3)],
        "y_l": [torch.randint(0, C, (6,), generator=gen) for _ in range(3)],
        "x_u": [randn(8, D) for _ in range(3)],
        "psi_u": [randn(8, PDIM) for _ in range(3)],
        "h_u": [torch.softmax(2 * randn(8, K, C), dim=-1) for _ in range(3)],
    }
    return student, prototypes, bias, data


def _losses(call, data, prototypes, bias, steps):
    """inner(theta, t) = CE(labeled) + lambda * KD toward a(x)^T H(x); outer = CE on another labeled batch."""

    def inner_loss(theta, t):
        a = torch.softmax(data["psi_u"][t] @ prototypes.T / TAU + bias, dim=-1)  # (B, K)
        target = torch.einsum("bk,bkc->bc", a, data["h_u"][t])
        ce = F.cross_entropy(call(theta, data["x_l"][t]), data["y_l"][t])
        return ce + LAMBDA * kd_loss(call(theta, data["x_u"][t]), target, T)

    def outer_loss(theta):
        return F.cross_entropy(call(theta, data["x_l"][steps]), data["y_l"][steps])

    return inner_loss, outer_loss


def _unrolled_outer(student, data, prototypes, bias, steps) -> float:
    """The outer loss after `steps` plain SGD steps, for finite differences (no graph through the steps)."""
    params, call = functional_student(student)
    inner_loss, outer_loss = _losses(call, data, prototypes, bias, steps)
    theta = {n: p.detach().clone().requires_grad_(True) for n, p in params.items()}
    for t in range(steps):
        grads = torch.autograd.grad(inner_loss(theta, t), list(theta.values()))
        theta = {
            n: (p - ALPHA * g).detach().requires_grad_(True) for (n, p), g in zip(theta.items(), grads, strict=True)
        }
    with torch.no_grad():
        return outer_loss(theta).item()


def _finite_differences(student, data, hyper, others, steps, eps=1e-6):
    """Central differences of the unrolled outer loss w.r.t. every entry of `hyper`."""
    grad = torch.zeros_like(hyper)
    flat = hyper.detach().view(-1)
    for i in range(flat.numel()):
        values = []
        for sign in (1, -1):
            shifted = flat.clone()
            shifted[i] += sign * eps
            args = {"prototypes": others.get("prototypes"), "bias": others.get("bias")}
            args[others["name"]] = shifted.view_as(hyper)
            values.append(_unrolled_outer(student, data, args["prototypes"], args["bias"], steps))
        grad.view(-1)[i] = (values[0] - values[1]) / (2 * eps)
    return grad


@pytest.mark.parametrize("steps", [1, 2])
def test_hypergradient_matches_finite_differences(steps):
    student, prototypes, bias, data = _problem(seed=steps)
    params, call = functional_student(student)
    inner_loss, outer_loss = _losses(call, data, prototypes, bias, steps)
    (g_p, g_b), outer = unrolled_hypergradient(params, inner_loss, outer_loss, [prototypes, bias], ALPHA, steps)

    assert outer.item() == pytest.approx(_unrolled_outer(student, data, prototypes, bias, steps), rel=1e-12)
    fd_p = _finite_differences(student, data, prototypes, {"name": "prototypes", "bias": bias.detach()}, steps)
    fd_b = _finite_differences(student, data, bias, {"name": "bias", "prototypes": prototypes.detach()}, steps)
    assert fd_p.abs().max() > 1e-6  # the second-order signal is really there
    torch.testing.assert_close(g_p, fd_p, rtol=1e-4, atol=1e-8)
    torch.testing.assert_close(g_b, fd_b, rtol=1e-4, atol=1e-8)


def _one_step_formula(student, data, prototypes, bias):
    """The one-step hypergradient written out: d/dphi L_out(theta - alpha grad_theta L_in(theta, phi))
    = -alpha * d/dphi [grad_theta L_in(theta, phi) . v], v = grad L_out at the moved theta (held fixed)."""
    params, call = functional_student(student)
    inner_loss, outer_loss = _losses(call, data, prototypes, bias, 1)
    theta = {n: p.detach().clone().requires_grad_(True) for n, p in params.items()}
    g = torch.autograd.grad(inner_loss(theta, 0), list(theta.values()), create_graph=True)
    moved = {n: (p - ALPHA * gi).detach().requires_grad_(True) for (n, p), gi in zip(theta.items(), g, strict=True)}
    v = torch.autograd.grad(outer_loss(moved), list(moved.values()))
    dot = sum((gi * vi).sum() for gi, vi in zip(g, v, strict=True))
    return [-ALPHA * h for h in torch.autograd.grad(dot, [prototypes, bias])]


def test_hypergradient_is_the_second_order_term_with_its_sign():
    """phi reaches the outer loss only through the unrolled step: the hypergradient is exactly -alpha times the
    mixed second derivative applied to the outer gradient (a dropped alpha, a flipped sign or a first-order
    shortcut all differ), and a small step against it lowers the unrolled outer loss while one along it raises it."""
    student, prototypes, bias, data = _problem(seed=5)
    params, call = functional_student(student)
    inner_loss, outer_loss = _losses(call, data, prototypes, bias, 1)
    (g_p, g_b), _ = unrolled_hypergradient(params, inner_loss, outer_loss, [prototypes, bias], ALPHA, steps=1)
    e_p, e_b = _one_step_formula(student, data, prototypes, bias)
    assert e_p.abs().max() > 1e-4 and e_b.abs().max() > 1e-4
    torch.testing.assert_close(g_p, e_p, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_b, e_b, rtol=1e-10, atol=1e-12)
    base = _unrolled_outer(student, data, prototypes.detach(), bias.detach(), 1)
    eta = 1e-3 / torch.cat([g_p.flatten(), g_b]).norm().item()
    down = _unrolled_outer(student, data, (prototypes - eta * g_p).detach(), (bias - eta * g_b).detach(), 1)
    up = _unrolled_outer(student, data, (prototypes + eta * g_p).detach(), (bias + eta * g_b).detach(), 1)
    assert down < base < up


def test_student_grads_untouched_and_unused_hyperparameter_gets_zero():
    student, prototypes, bias, data = _problem()
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    params, call = functional_student(student)
    unused = torch.ones(5, dtype=torch.float64, requires_grad=True)
    inner_loss, outer_loss = _losses(call, data, prototypes, bias, 1)
    (g_p, g_b, g_unused), _ = unrolled_hypergradient(
        params, inner_loss, outer_loss, [prototypes, bias, unused], ALPHA, steps=1
    )
    assert torch.equal(g_unused, torch.zeros(5, dtype=torch.float64))
    # and the used ones are the real hypergradient, not merely non-zero
    e_p, e_b = _one_step_formula(student, data, prototypes, bias)
    torch.testing.assert_close(g_p, e_p, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_b, e_b, rtol=1e-10, atol=1e-12)
    for name, p in student.named_parameters():
        assert p.grad is None, name
        assert torch.equal(p.detach(), before[name]), name  # the real parameters did not move
    assert prototypes.grad is None and bias.grad is None  # gradients are returned, not accumulated


def test_unrolled_call_does_not_move_batchnorm_statistics():
    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6), torch.nn.Linear(6, 3)).train()
    stats = {n: b.clone() for n, b in student.named_buffers()}
    params, call = functional_student(student)
    w = torch.randn(3, requires_grad=True)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))

    def inner_loss(theta, t):
        return F.cross_entropy(call(theta, x) + w, y)

    def outer_loss(theta):
        return F.cross_entropy(call(theta, x), y)

    (g,), _ = unrolled_hypergradient(params, inner_loss, outer_loss, [w], 0.1, steps=2)
    assert g.abs().sum() > 0
    for name, b in student.named_buffers():
        assert torch.equal(b, stats[name]), name
    # Whereas an ordinary forward in train mode does move them (so the check above can fail).
    student(x)
    assert not torch.equal(student[1].running_mean, stats["1.running_mean"])


def test_functional_student_skips_frozen_parameters_and_unwraps_logits():
    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Linear(4, 3)
            self.frozen = torch.nn.Linear(4, 3).requires_grad_(False)

        def forward(self, x):
            class Out:
                logits = self.body(x) + self.frozen(x)

            return Out()

    model = Wrapped()
    params, call = functional_student(model)
    assert set(params) == {"body.weight", "body.bias"}
    x = torch.randn(2, 4)
    zero = {n: torch.zeros_like(p) for n, p in params.items()}
    torch.testing.assert_close(call(zero, x), model.frozen(x))


# ----------------------------------------------------------------------------------------------- first order


def _bn_problem(seed: int = 0):
    """A nonlinear student with BatchNorm (train mode couples the batch), reuser-like P and b, float64 data."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    torch.manual_seed(seed)
    student = torch.nn.Sequential(
        torch.nn.Linear(D, 8), torch.nn.BatchNorm1d(8), torch.nn.Tanh(), torch.nn.Linear(8, C)
    ).double()
    prototypes, bias = randn(K, PDIM).requires_grad_(True), (0.3 * randn(K)).requires_grad_(True)
    data = {
        "x": torch.cat([randn(6, D), randn(8, D)]),  # 6 labeled, then 8 unlabeled, in one batch
        "y": torch.randint(0, C, (6,), generator=gen),
        "psi_u": randn(8, PDIM),
        "h_u": torch.softmax(2 * randn(8, K, C), dim=-1),
        "x_o": randn(6, D),
        "y_o": torch.randint(0, C, (6,), generator=gen),
        "direct_psi": randn(6, PDIM),
        "direct_h": torch.softmax(2 * randn(6, K, C), dim=-1),
    }
    return student, prototypes, bias, data


def _bn_losses(call, data, prototypes, bias, direct: bool):
    def reuse(psi, h):
        a = torch.softmax(psi @ prototypes.T / TAU + bias, dim=-1)
        return torch.einsum("bk,bkc->bc", a, h)

    def term(z):  # the only part of the inner loss that depends on phi
        return LAMBDA * kd_loss(z[6:], reuse(data["psi_u"], data["h_u"]), T)

    def inner_loss(theta, t):
        z = call(theta, data["x"])
        return F.cross_entropy(z[:6], data["y"]) + term(z)

    def outer_loss(theta):
        loss = F.cross_entropy(call(theta, data["x_o"]), data["y_o"])
        if direct:
            loss = loss + F.nll_loss(reuse(data["direct_psi"], data["direct_h"]).log(), data["y_o"])
        return loss

    return term, inner_loss, outer_loss


@pytest.mark.parametrize("mode, rtol", [("jvp", 1e-9), ("fd", 1e-5)])
@pytest.mark.parametrize("direct", [False, True])
def test_first_order_hypergradient_equals_the_unrolled_one(mode, rtol, direct):
    student, prototypes, bias, data = _bn_problem(seed=3)
    params, call = functional_student(student)
    term, inner_loss, outer_loss = _bn_losses(call, data, prototypes, bias, direct)
    expected, out_expected = unrolled_hypergradient(params, inner_loss, outer_loss, [prototypes, bias], ALPHA, 1)

    theta = {n: p.detach().requires_grad_(True) for n, p in params.items()}
    grad = dict(zip(theta, torch.autograd.grad(inner_loss(theta, 0), list(theta.values())), strict=True))
    got, out = first_order_hypergradient(
        params, call, grad, data["x"], term, outer_loss, [prototypes, bias], ALPHA, jvp_mode=mode
    )
    assert expected[0].abs().max() > 1e-4  # a real signal to compare
    assert out.item() == pytest.approx(out_expected.item(), rel=1e-12)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=rtol, atol=rtol * e.abs().max().item())
    assert prototypes.grad is None and all(p.grad is None for p in student.parameters())


def test_first_order_hypergradient_rejects_an_unknown_mode():
    student, prototypes, bias, data = _bn_problem()
    params, call = functional_student(student)
    with pytest.raises(ValueError, match="jvp_mode"):
        first_order_hypergradient(params, call, params, data["x"], None, None, [prototypes], ALPHA, jvp_mode="exact")
