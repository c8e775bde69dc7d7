"""The attention reuser: weights, R(x), prototype initialisation, save / load (in this and a new process)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import make_images, make_timm_teacher, make_transformers_teacher
from safetensors.torch import load_file, save_file

from hf_mrl import AttentionReuser, Embedding, ModelPool

K, C, P = 3, 4, 5


def _random_inputs(n: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    feats = torch.randn(n, P, generator=gen)
    probs = torch.softmax(3 * torch.randn(n, K, C, generator=gen), dim=-1)
    return feats, probs


def _reuser(**kwargs) -> AttentionReuser:
    reuser = AttentionReuser([f"org/t{k}@c{k}" for k in range(K)], [f"l{c}" for c in range(C)], embed_dim=P, **kwargs)
    with torch.no_grad():
        reuser.prototypes.copy_(torch.randn(K, P, generator=torch.Generator().manual_seed(1)))
        reuser.bias.copy_(torch.tensor([0.3, -0.2, 0.1]))
    return reuser


def test_weights_are_on_the_simplex_and_depend_on_the_input():
    reuser = _reuser()
    feats, probs = _random_inputs(8)
    weights = reuser(feats, probs)["weights"]
    assert weights.shape == (8, K)
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(8))
    assert not torch.allclose(weights[0], weights[1])  # instance-aware, not one global weighting


def test_attention_formula():
    reuser = _reuser(temperature=2.0)
    feats, _ = _random_inputs(6)
    with torch.no_grad():
        reuser.psi_mean.copy_(torch.linspace(-1, 1, P))
        reuser.psi_std.copy_(torch.linspace(0.5, 2, P))
    z = (feats - reuser.psi_mean) / reuser.psi_std
    expected = torch.softmax(z @ reuser.prototypes.detach().T / 2.0 + reuser.bias.detach(), dim=-1)
    torch.testing.assert_close(reuser.attention(feats), expected)


def test_default_temperature_is_sqrt_of_embed_dim():
    assert _reuser().temperature == pytest.approx(math.sqrt(P))


def test_reuse_prediction_is_the_weighted_sum_of_teacher_rows():
    reuser = _reuser()
    feats, probs = _random_inputs(8)
    out = reuser(feats, probs)
    assert out["probs"].shape == (8, C)
    torch.testing.assert_close(out["probs"].sum(-1), torch.ones(8))
    assert (out["probs"] >= 0).all()
    expected = torch.stack([sum(out["weights"][i, k] * probs[i, k] for k in range(K)) for i in range(8)])
    torch.testing.assert_close(out["probs"], expected)


@pytest.mark.parametrize("k", range(K))
def test_a_large_bias_routes_everything_to_one_teacher(k):
    reuser = _reuser()
    with torch.no_grad():
        reuser.bias.zero_()
        reuser.bias[k] = 50.0
    feats, probs = _random_inputs(8)
    out = reuser(feats, probs)
    assert (out["weights"][:, k] > 0.999).all()
    torch.testing.assert_close(out["probs"], probs[:, k], atol=1e-3, rtol=0)


def test_forward_checks_shapes():
    reuser = _reuser()
    feats, probs = _random_inputs(4)
    with pytest.raises(ValueError, match="teacher probabilities"):
        reuser(feats, probs[:, :2])
    with pytest.raises(ValueError, match="expects 5"):
        reuser(feats[:, :3], probs)


def test_fit_standardizer_centres_the_features():
    reuser = _reuser()
    feats = torch.randn(200, P) * torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]) + 7.0
    reuser.fit_standardizer(feats)
    z = reuser.standardize(feats)
    torch.testing.assert_close(z.mean(0), torch.zeros(P), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(0), torch.ones(P), atol=1e-5, rtol=0)


def test_init_prototypes_with_labels_assigns_the_teacher_best_on_the_true_class():
    reuser = _reuser()
    feats, probs = _random_inputs(30, seed=4)
    labels = torch.randint(0, C, (30,), generator=torch.Generator().manual_seed(5))
    owner = reuser.init_prototypes(feats, probs, labels)
    expected = torch.tensor([int(probs[i, :, labels[i]].argmax()) for i in range(30)])
    assert torch.equal(owner, expected)
    # Confidence-based assignment disagrees on this data, so the labels were really used.
    assert not torch.equal(owner, probs.max(-1).values.argmax(-1))
    z = reuser.standardize(feats)
    for k in range(K):
        assert (owner == k).any()
        torch.testing.assert_close(reuser.prototypes[k].detach(), z[owner == k].mean(0))
    share = torch.bincount(owner, minlength=K).float() + 1
    torch.testing.assert_close(reuser.bias.detach(), (share / share.sum()).log())


def test_init_prototypes_without_labels_uses_confidence_and_randomises_idle_teachers():
    reuser = _reuser()
    feats, _ = _random_inputs(10, seed=6)
    probs = torch.full((10, K, C), 1.0 / C)
    probs[:, 1] = torch.tensor([0.97, 0.01, 0.01, 0.01])  # teacher 1 is the most confident everywhere
    owner = reuser.init_prototypes(feats, probs, generator=torch.Generator().manual_seed(0))
    assert (owner == 1).all()
    torch.testing.assert_close(reuser.prototypes[1].detach(), reuser.standardize(feats).mean(0))
    for k in (0, 2):
        assert 0 < reuser.prototypes[k].norm() < 1.0  # a small random prototype


# ----------------------------------------------------------------------------------------------- save / load


def test_save_and_load_round_trip(tmp_path):
    reuser = _reuser(embedding={"type": "pixels", "dim": P, "seed": 3}, temperature=1.5)
    reuser.fit_standardizer(torch.randn(50, P) * 3 + 1)
    reuser.save_pretrained(tmp_path / "r")
    assert {p.name for p in (tmp_path / "r").iterdir()} >= {"config.json", "model.safetensors", "README.md"}
    assert (tmp_path / "r" / "README.md").read_text().strip()  # card content is tested with the cards

    loaded = AttentionReuser.from_pretrained(tmp_path / "r")
    assert loaded.teachers == reuser.teachers
    assert loaded.label_names == reuser.label_names
    assert loaded.embedding_spec == {"type": "pixels", "dim": P, "seed": 3}
    assert loaded.temperature == 1.5
    assert not loaded.training
    state, loaded_state = reuser.state_dict(), loaded.state_dict()
    assert state.keys() == loaded_state.keys()
    for name in state:
        assert torch.equal(state[name], loaded_state[name]), name
    feats, probs = _random_inputs(5)
    torch.testing.assert_close(loaded(feats, probs)["weights"], reuser(feats, probs)["weights"], rtol=0, atol=0)


def test_config_records_resolved_defaults(tmp_path):
    """A default embedding / temperature is written out, so a later change of defaults cannot alter a saved reuser."""
    _reuser().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["embedding"] == {"type": "teacher-outputs"}
    assert config["temperature"] == pytest.approx(math.sqrt(P))
    assert config["teachers"] == [f"org/t{k}@c{k}" for k in range(K)]
    assert config["embed_dim"] == P


def test_loading_with_a_wrong_embed_dim_fails(tmp_path):
    _reuser().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["embed_dim"] = P + 1
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="Could not load"):
        AttentionReuser.from_pretrained(tmp_path)


def test_loading_a_newer_format_fails(tmp_path):
    _reuser().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["format_version"] == 1
    config["format_version"] = 99
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="format version 99"):
        AttentionReuser.from_pretrained(tmp_path)


def test_loading_a_folder_without_weights_fails(tmp_path):
    _reuser().save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="model.safetensors"):
        AttentionReuser.from_pretrained(tmp_path)


def test_constructor_refusals():
    with pytest.raises(ValueError, match="at least one teacher"):
        AttentionReuser([], ["a"], embed_dim=2)
    with pytest.raises(ValueError, match="embed_dim"):
        AttentionReuser(["t"], ["a"], embed_dim=0)
    with pytest.raises(ValueError, match="Unknown embedding"):
        AttentionReuser(["t"], ["a"], embed_dim=2, embedding={"type": "nope"})


def test_attach_pool_checks_the_teachers(tmp_path):
    folder = make_timm_teacher(tmp_path / "tm", ["a", "b"])
    pool = ModelPool([str(folder)], ["a", "b"])
    with pytest.raises(ValueError, match="not the one"):
        AttentionReuser(["org/other"], ["a", "b"], embed_dim=2).attach_pool(pool)


def test_reuser_over_a_real_pool_predicts_the_same_in_a_new_process(tmp_path):
    labels = ["a", "b", "c"]
    tr = make_transformers_teacher(tmp_path / "tr", ["b", "a", "c"], seed=0)
    tm = make_timm_teacher(tmp_path / "tm", ["c", "a"], seed=1)
    pool = ModelPool([str(tr), str(tm)], labels)
    embedding = Embedding("teacher-outputs")
    images = make_images(12, seed=2)
    probs = pool.probs(images)
    feats = embedding(images, probs)
    reuser = AttentionReuser(pool.ids, labels, embed_dim=feats.shape[1], embedding=embedding.spec)
    reuser.fit_standardizer(feats)
    reuser.init_prototypes(feats, probs, torch.arange(12) % 3)
    reuser.attach_pool(pool)
    expected = reuser.predict(images)
    assert expected["weights"].shape == (12, 2) and expected["probs"].shape == (12, 3)
    assert expected["weights"].std(0).sum() > 0  # weights vary across inputs

    reuser.save_pretrained(tmp_path / "reuser")
    save_file({"images": images}, tmp_path / "images.safetensors")
    script = textwrap.dedent(
        f"""
        from safetensors.torch import load_file, save_file
        from hf_mrl import AttentionReuser
        reuser = AttentionReuser.from_pretrained({str(tmp_path / "reuser")!r})
        out = reuser.predict(load_file({str(tmp_path / "images.safetensors")!r})["images"])
        save_file({{k: v.contiguous() for k, v in out.items()}}, {str(tmp_path / "out.safetensors")!r})
        """
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = load_file(tmp_path / "out.safetensors")
    assert torch.equal(got["predictions"], expected["predictions"])
    torch.testing.assert_close(got["weights"], expected["weights"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got["probs"], expected["probs"], rtol=1e-5, atol=1e-6)
