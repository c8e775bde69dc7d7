"""Endpoint teachers: called through huggingface_hub's InferenceClient against a real local server; top-k answers
turned into distributions; each image asked once; retries, budget, and answers that survive a kill."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from helpers import make_images, make_timm_teacher, make_transformers_teacher

from hf_mrl import ModelPool
from hf_mrl.pool.endpoint import EndpointError, EndpointOptions, answer_to_probs
from hf_mrl.testing import LocalEndpoint

LABELS = ["a", "b", "c", "d"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("endpoints")
    folders = {f"t{i}": make_transformers_teacher(root / f"t{i}", LABELS, seed=i) for i in range(3)}
    folders["timm"] = make_timm_teacher(root / "timm", LABELS, seed=3)
    with LocalEndpoint(folders) as server:
        yield {"server": server, "folders": folders}


def _fast(**kw) -> EndpointOptions:
    return EndpointOptions(backoff=0.01, **kw)


# ----------------------------------------------------------------------------------------------- answers -> probs


def test_a_top_k_answer_becomes_a_distribution_with_the_rest_spread_over_unlisted_classes():
    p, seen = answer_to_probs([("b", 0.5), ("x-not-a-target", 0.2)], LABELS)
    # listed target mass 0.5 on b; 1 - 0.7 = 0.3 unlisted mass over a, c, d; renormalised over the targets
    np.testing.assert_allclose(p, np.array([0.1, 0.5, 0.1, 0.1]) / 0.8, rtol=1e-6)
    assert seen.tolist() == [False, True, False, False]
    p, seen = answer_to_probs([("A", 0.7), ("b", 0.1), ("c", 0.1), ("d", 0.1)], LABELS)  # every class listed
    np.testing.assert_allclose(p, [0.7, 0.1, 0.1, 0.1], rtol=1e-6)
    p, seen = answer_to_probs([("zebra", 0.9)], LABELS)  # no target label: no information
    np.testing.assert_allclose(p, [0.25] * 4)
    assert not seen.any()
    p, _ = answer_to_probs([("tabby, tabby cat", 0.6)], ["dog", "tabby cat"])  # synonyms, as for local teachers
    np.testing.assert_allclose(p, [0.4, 0.6], rtol=1e-6)
    p, _ = answer_to_probs([("kitty", 0.8)], ["dog", "cat"], label_map={"cat": ["kitty"]})
    np.testing.assert_allclose(p, [0.2, 0.8], rtol=1e-6)


@pytest.mark.parametrize("name", ["t0", "timm"])
def test_full_answers_match_the_local_teacher(served, name):
    server, folders = served["server"], served["folders"]
    images = make_images(6, size=16, seed=1)
    local = ModelPool([str(folders[name])], LABELS).probs(images)
    remote = ModelPool([f"endpoint:{server.url_for(name)}"], LABELS, endpoint=_fast(top_k=None)).probs(images)
    torch.testing.assert_close(remote, local, atol=1e-5, rtol=1e-4)


def test_top_1_keeps_the_argmax_and_spreads_the_rest(served):
    server, folders = served["server"], served["folders"]
    images = make_images(5, size=16, seed=2)
    local = ModelPool([str(folders["t1"])], LABELS).probs(images)[:, 0]
    pool = ModelPool([f"endpoint:{server.url_for('t1')}"], LABELS, endpoint=_fast(top_k=1))
    top1 = pool.probs(images)[:, 0]
    assert torch.equal(top1.argmax(-1), local.argmax(-1))
    best = local.max(-1).values
    torch.testing.assert_close(top1.max(-1).values, best, atol=1e-5, rtol=1e-4)
    others = (1 - best) / 3
    torch.testing.assert_close(top1.sort(-1).values[:, :3], others[:, None].expand(-1, 3), atol=1e-5, rtol=1e-4)
    assert pool.endpoint_stats()["teachers"][pool.ids[0]]["observed_mass"] == pytest.approx(float(best.mean()), 1e-4)


# ----------------------------------------------------------------------------------------------- calls


def test_each_image_is_asked_once_across_pools_seeds_and_subsets(served, tmp_path):
    server = served["server"]
    images = make_images(8, size=16, seed=3)
    line = f"endpoint:{server.url_for('t2')}"
    before = server.calls
    first = ModelPool([line], LABELS, cache_dir=tmp_path, endpoint=_fast()).probs(images)
    assert server.calls - before == 8
    again = ModelPool([line], LABELS, cache_dir=tmp_path, endpoint=_fast())
    torch.testing.assert_close(again.probs(images[[5, 1, 3]]), first[[5, 1, 3]], rtol=0, atol=0)
    assert server.calls - before == 8 and again.endpoint_stats()["cached"] == 3
    fewer = ModelPool([line], LABELS, cache_dir=tmp_path, endpoint=_fast(top_k=2))  # top 5 answers serve top 2
    fewer.probs(images)
    assert server.calls - before == 8
    more = ModelPool([line], LABELS, cache_dir=tmp_path, endpoint=_fast(top_k=None))  # but not "every label"
    more.probs(images[:2])
    assert server.calls - before == 10


@pytest.mark.parametrize("fault", ["503-loading", "429", "500", "malformed", "drop", "slow"])
def test_transient_faults_are_retried(served, fault):
    server = served["server"]
    line = f"endpoint:{server.url_for('t0')}"
    opts = _fast(concurrency=1, timeout=0.5)
    if fault == "503-loading":
        server.fail(503, times=2, loading=0.05)
    elif fault == "429":
        server.fail(429, times=2, retry_after=0.05)
    elif fault == "500":
        server.fail(500, times=1)
    elif fault == "malformed":
        server.malformed(times=2)
    elif fault == "drop":
        server.drop(times=2)
    else:
        server.slow(2.0, times=1)  # past the 0.5 s timeout: asked again
    pool = ModelPool([line], LABELS, endpoint=opts)
    out = pool.probs(make_images(2, size=16, seed=4))
    assert torch.allclose(out.sum(-1), torch.ones(2, 1))
    stats = pool.endpoint_stats()
    assert stats["failed"] >= 1 and stats["calls"] == stats["answered"] + stats["failed"]


def test_a_client_error_is_not_retried_and_says_so(served):
    server = served["server"]
    before = server.calls
    pool = ModelPool([f"endpoint:{server.url_for('no-such-model')}"], LABELS, endpoint=_fast())
    with pytest.raises(EndpointError, match="HTTP 404"):
        pool.probs(make_images(1, size=16, seed=5))
    assert server.calls - before == 1


def test_the_call_budget_stops_the_pass_and_keeps_what_was_answered(served, tmp_path):
    server = served["server"]
    line = f"endpoint:{server.url_for('t1')}"
    images = make_images(10, size=16, seed=6)
    before = server.calls
    with pytest.raises(EndpointError, match="budget"):
        ModelPool([line], LABELS, cache_dir=tmp_path, endpoint=_fast(max_calls=4, concurrency=1)).probs(images)
    assert server.calls - before == 4
    resumed = ModelPool([line], LABELS, cache_dir=tmp_path, endpoint=_fast(max_calls=6, concurrency=1))
    resumed.probs(images)
    assert server.calls - before == 10 and resumed.endpoint_stats()["cached"] == 4


def test_damaged_answer_lines_are_asked_again(served, tmp_path):
    server = served["server"]
    line = f"endpoint:{server.url_for('t2')}"
    images = make_images(4, size=16, seed=7)
    ModelPool([line], LABELS, cache_dir=tmp_path, endpoint=_fast()).probs(images)
    (store,) = tmp_path.rglob("answers-*.jsonl")
    lines = store.read_text().splitlines()
    doc = json.loads(lines[1])
    doc["answer"][0][1] = 0.999  # a changed score: the line's checksum no longer matches
    lines[1] = json.dumps(doc)
    store.write_text("\n".join(lines[:3]) + "\n" + lines[3][:20])  # and a last line cut by a kill
    before = server.calls
    ModelPool([line], LABELS, cache_dir=tmp_path, endpoint=_fast()).probs(images)
    assert server.calls - before == 2


def test_credentials_never_come_from_the_pool_file(tmp_path):
    from hf_mrl.pool.model_pool import parse_pool_file

    for url in ("https://user:secret@host/m", "https://host/m?api_key=hf_x", "https://host/m?token=hf_x"):
        (tmp_path / "pool.txt").write_text(f"endpoint:{url}\n")
        with pytest.raises(ValueError, match="HF_TOKEN"):
            parse_pool_file(tmp_path / "pool.txt")
    (tmp_path / "pool.txt").write_text("endpoint:https://host/models/org/name\n")
    assert parse_pool_file(tmp_path / "pool.txt") == ["endpoint:https://host/models/org/name"]


def test_random_faults_give_the_clean_outputs_with_one_good_call_per_image(served, tmp_path):
    images = make_images(40, size=16, seed=14)
    with LocalEndpoint({"t1": served["folders"]["t1"]}) as server:  # its own: no straggler of another test counts
        line = f"endpoint:{server.url_for('t1')}"
        clean = ModelPool([line], LABELS, endpoint=_fast(top_k=3)).probs(images)
        answered = server.answered
        server.fault_rates = {"503": 0.10, "429": 0.05, "drop": 0.05}
        pool = ModelPool([line], LABELS, cache_dir=tmp_path, endpoint=_fast(top_k=3, concurrency=4))
        faulty = pool.probs(images)
    torch.testing.assert_close(faulty, clean, rtol=0, atol=0)
    assert server.answered - answered == 40  # one successful call per image
    stats = pool.endpoint_stats()
    assert stats["failed"] > 0 and stats["answered"] == 40 and stats["calls"] == 40 + stats["failed"]


def test_screening_flags_an_endpoint_with_permuted_labels(served, tmp_path):
    from test_selection import spread_classes

    from hf_mrl.pool.screening import screen_teachers
    from hf_mrl.pool.selection import permuted_labels

    images = make_images(48, size=16, seed=15)
    honest = spread_classes(make_transformers_teacher(tmp_path / "honest", LABELS, seed=5), images)
    folder = tmp_path / "permuted"
    shutil.copytree(honest, folder)
    config = json.loads((folder / "config.json").read_text())
    config["id2label"] = {"0": "b", "1": "c", "2": "d", "3": "a"}  # the same outputs under shifted names
    config["label2id"] = {v: int(k) for k, v in config["id2label"].items()}
    (folder / "config.json").write_text(json.dumps(config))
    truth = ModelPool([str(honest)], LABELS).probs(images)[:, 0].argmax(-1)
    assert len(set(truth.tolist())) == 4
    with LocalEndpoint({"p": folder}) as server:
        pool = ModelPool([f"endpoint:{server.url_for('p')}"], LABELS, endpoint=_fast(top_k=None))
        probs = pool.probs(images)
    (score,) = screen_teachers(probs, truth, pool.ids, pool.coverage)
    assert score.accuracy < 0.5 and score.flags  # the run's screening flags it...
    moved = permuted_labels(probs[:, 0], truth)  # ...and `hf-mrl select` names the permutation
    assert moved is not None and {(t, p) for t, p, _ in moved} == {(0, 1), (1, 2), (2, 3), (3, 0)}


# ----------------------------------------------------------------------------------------------- a whole run


@pytest.mark.slow
def test_a_run_mixing_local_and_endpoint_teachers_trains_saves_reloads_and_asks_once(tiny, tmp_path):
    import test_recipe

    from hf_mrl import AttentionReuser

    labels = ["a", "b", "c"]
    folders = {f"e{i}": make_transformers_teacher(tmp_path / f"e{i}", labels, seed=10 + i) for i in range(2)}
    with LocalEndpoint(folders) as server:
        pool = tmp_path / "pool.txt"
        local = tiny["root"] / "teacher-hf"
        pool.write_text(f"{local}\nendpoint:{server.url_for('e0')}\nendpoint:{server.url_for('e1')}\n")
        run = {**tiny, "pool": pool}
        token = "hf_PLANTEDtokenNEVERtoBEwritten0123"
        os.environ["HF_TOKEN"] = token  # the subprocess's InferenceClient sends it
        try:
            metrics = test_recipe.launch(run, tmp_path / "run", "--endpoint_top_k", "2")  # the guard on, as by default
        finally:
            del os.environ["HF_TOKEN"]
        assert metrics["guard"] is not None and metrics["guard"]["decision"] in ("keep", "fall_back")
        assert set(server.authorizations) == {f"Bearer {token}"}  # used for every call...
        for path in (tmp_path / "run").rglob("*"):  # ...and written nowhere: metrics, cards, configs, checkpoints
            assert not path.is_file() or token.encode() not in path.read_bytes(), path
        assert test_recipe.LAST_OUTPUT and not any(token in text for text in test_recipe.LAST_OUTPUT)  # nor logged
        n = sum(tiny["sizes"].values())
        assert server.calls == 2 * n  # each image once per endpoint
        assert metrics["endpoints"]["answered"] == 2 * n and metrics["endpoints"]["calls"] == 2 * n
        again = test_recipe.launch(
            run, tmp_path / "run2", "--endpoint_top_k", "2", "--guard_folds", "0", "--seed", "1"
        )
        assert server.calls == 2 * n  # another seed: no call
        assert again["endpoints"]["calls"] == 0 and again["endpoints"]["cached"] == 2 * n

        reuser = AttentionReuser.from_pretrained(tmp_path / "run" / "reuser")
        assert [t.startswith("endpoint:") for t in reuser.teachers] == [False, True, True]
        card = (tmp_path / "run" / "reuser" / "README.md").read_text()
        assert "are inference endpoints" in card and "`predict` calls them" in card
        out = reuser.predict(make_images(3, size=16, seed=9))
        assert out["probs"].shape == (3, 3) and server.calls == 2 * n + 2 * 3
        student = (tmp_path / "run" / "student" / "config.json").read_text()
        assert "endpoint" not in student


KILLED = """
import sys
sys.path.insert(0, {tests!r})
from helpers import make_images
from hf_mrl import ModelPool
from hf_mrl.pool.endpoint import EndpointOptions

pool = ModelPool([{line!r}], {labels!r}, cache_dir={cache!r}, endpoint=EndpointOptions(concurrency=1))
pool.probs(make_images(12, size=16, seed=11))
"""


def test_a_killed_run_loses_no_answer_it_got(served, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    server = served["server"]
    line = f"endpoint:{server.url_for('t0')}"
    script = tmp_path / "calls.py"
    script.write_text(KILLED.format(tests=str(Path(__file__).parent), line=line, labels=LABELS, cache=str(tmp_path)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    start, server.delay = server.answered, 0.2
    try:
        proc = subprocess.Popen([sys.executable, str(script)], env=env)
        deadline = time.monotonic() + 120
        while server.answered - start < 5 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        server.delay = 0.0
    assert 5 <= server.answered - start < 12
    (store,) = tmp_path.rglob("answers-*.jsonl")
    kept = len(store.read_text().splitlines())  # answers the killed run had received
    assert kept >= 4
    before = server.calls
    pool = ModelPool([line], LABELS, cache_dir=tmp_path, endpoint=_fast(concurrency=1))
    pool.probs(make_images(12, size=16, seed=11))
    assert server.calls - before == 12 - kept  # none of them asked again


def test_select_scores_endpoint_candidates_under_one_call_budget(served, tmp_path):
    from hf_mrl.pool.model_pool import parse_pool_file
    from hf_mrl.pool.selection import select_pool

    server, folders = served["server"], served["folders"]
    images, unlabeled = make_images(24, size=16, seed=12), make_images(16, size=16, seed=13)
    labels = ModelPool([str(folders["t0"])], LABELS).probs(images)[:, 0].argmax(-1)  # t0 is right on every label
    ids = [f"endpoint:{server.url_for(n)}" for n in ("t0", "t1")]
    before = server.calls
    result = select_pool(
        LABELS,
        images,
        labels,
        unlabeled,
        k=1,
        output_dir=tmp_path / "out",
        ids=ids,
        use_search=False,
        cache_dir=tmp_path / "sel",
        endpoint=_fast(top_k=None),
    )
    assert [c.id for c in result.selected] == [ids[0]]
    assert parse_pool_file(tmp_path / "out" / "pool.txt") == [ids[0]]
    assert server.calls - before == 2 * (24 + 16)
