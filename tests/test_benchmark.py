"""benchmarks/benchmark.py and benchmarks/harness.py on a tiny slice: runs, resumes, renders, reproduces a record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from harness import RECORDS_DIR, BenchmarkSpec, load_records, plan_runs, summarise
from helpers import load_recipe, make_target_dataset, make_timm_teacher, make_transformers_teacher, one_torch_thread

recipe = load_recipe("benchmark")

TINY_STUDENT = {"architecture": "resnet10t", "model_args": {"channels": [8, 8, 16, 16], "stem_width": 8}}
METHODS = ["supervised", "mr-bs", "mrl", "oracle"]


@pytest.fixture(scope="module")
def slice_(tmp_path_factory):
    """Two tiny teachers and two tiny 'settings' (A, B: dataset folders with two latent domains each)."""
    root = tmp_path_factory.mktemp("bench")
    labels = ["a", "b", "c"]
    make_transformers_teacher(root / "teacher-hf", labels, seed=0)
    make_timm_teacher(root / "teacher-timm", labels, seed=1)
    pool = root / "pool.txt"
    pool.write_text("teacher-hf\nteacher-timm\n")
    for i, setting in enumerate("AB"):
        make_target_dataset(root / "data" / setting, n_labeled_per_class=2, n_unlabeled=24, n_test=12, seed=i)
    return root


def _argv(root: Path, results: Path, *extra: str) -> list[str]:
    return [
        "--quick",  # its presets, each overridden below but the folder
        "--results_dir", str(results),
        "--pool", str(root / "pool.txt"),
        "--dataset_template", str(root / "data" / "{setting}"),
        "--cache_dir", str(root / "cache"),
        "--settings", "A,B",
        "--methods", ",".join(METHODS),
        "--seeds", "0",
        "--labeled_per_class", "2",
        "--budgets", "1,2",
        "--budget_setting", "A",
        "--max_steps", "3",
        "--batch_size", "4",
        "--unlabeled_batch_size", "8",
        "--config", json.dumps({"outer_every": 2}),
        "--student", json.dumps(TINY_STUDENT),
        "--workers", "1",
        *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def ran(slice_, tmp_path_factory):
    """The tiny benchmark, run once: (root, results dir, summary)."""
    results = tmp_path_factory.mktemp("results")
    with one_torch_thread():
        summary = recipe.main(_argv(slice_, results))
    return slice_, results, summary


def test_plan_covers_the_full_grid_and_the_budget_curve_once():
    keys = plan_runs()
    assert len(keys) == 9 * 7 * 5 + 9 * 4 * 5  # the MUS n=10 runs are shared by the table and the curve
    assert len(set(keys)) == len(keys)
    quick = plan_runs(settings=["M", "MUS"], seeds=[0], budgets=[2, 10, 50])
    assert len(quick) == 9 * 4


def test_records_hold_what_a_rerun_needs(ran):
    _, results, _ = ran
    records = load_records(results)
    assert len(records) == len(METHODS) * 3  # settings A and B at 2 per class, and A at 1 per class
    rec = next(r for r in records if r["key"] == {"method": "mrl", "setting": "A", "labeled_per_class": 2, "seed": 0})
    assert rec["config"]["method"] == "mrl" and rec["config"]["max_steps"] == 3 and rec["config"]["outer_every"] == 2
    assert (
        rec["dataset"]["setting"] == "A" and rec["dataset"]["labeled_per_class"] == 2 and rec["dataset"]["seed"] == 0
    )
    assert len(rec["pool"]["ids"]) == 2 and rec["pool"]["hash"]
    assert rec["environment"]["version"] and "git_commit" in rec["environment"]
    assert 0.0 <= rec["accuracy"] <= 1.0 and set(rec["per_domain"]) == {"d0", "d1"}
    assert rec["wall_time_s"] > 0 and rec["threads"] == 1
    att = rec["attention"]
    assert set(att["mean_by_domain"]) == {"d0", "d1"} and 0.0 <= att["in_domain_routing"] <= 1.0
    # every method shares one config but for `method`
    configs = {json.dumps({**r["config"], "method": None, "seed": None}, sort_keys=True) for r in records}
    assert len(configs) == 1


def test_report_has_the_paper_table_matrix_budget_and_attention(ran):
    _, results, summary = ran
    readme = (results / "README.md").read_text()
    header = next(line for line in readme.splitlines() if line.startswith("| method | A"))
    assert header == "| method | A | B | Ave. Gain |"
    for name in ("| Supervised |", "| MR-BS |", "| MRL |", "| *Oracle routing* † |"):
        assert name in readme
    assert "teacher x test-domain accuracy" in readme and "| teacher-hf |" in readme
    assert "in-domain routing rate" in readme
    assert (results / "budget_curve.png").stat().st_size > 1000
    assert (results / "attention.png").stat().st_size > 1000
    saved = json.loads((results / "summary.json").read_text())
    assert set(saved["main"]) == set(METHODS) and saved["budgets"] == [1, 2]
    assert saved["ave_gain"]["supervised"]["mean"] == 0.0
    assert summary["best"]["A"] != "oracle"  # the reference row is never ranked
    assert saved["wall_time_s"] > 0


def test_a_second_invocation_runs_nothing_and_a_stopped_one_continues(ran, capsys):
    root, results, _ = ran
    records = sorted((results / RECORDS_DIR).glob("*.json"))
    stamps = {p: p.stat().st_mtime_ns for p in records}
    recipe.main(_argv(root, results))
    assert "0 to run" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in records} == stamps
    # a run killed before its record, and one killed while writing it (a torn file), are run again
    lost, torn = records[0], records[1]
    lost.unlink()
    torn.write_text(torn.read_text()[:50])
    recipe.main(_argv(root, results))
    out = capsys.readouterr().out
    assert "2 to run" in out and "ran 2 run(s)" in out
    assert len(load_records(results)) == len(records)
    assert {p: p.stat().st_mtime_ns for p in records if p not in (lost, torn)} == {
        p: t for p, t in stamps.items() if p not in (lost, torn)
    }


def test_rerun_reproduces_a_record_exactly(ran, tmp_path):
    root, results, _ = ran
    for method in ("mrl", "supervised"):
        path = next((results / RECORDS_DIR).glob(f"{method}__A__n2__s0__*.json"))
        out = recipe.main(["--rerun", str(path), "--cache_dir", str(root / "cache")])
        assert out["match"], out
        assert out["record"]["predictions_sha256"] == json.loads(path.read_text())["predictions_sha256"]
    forged = json.loads(path.read_text())
    forged["predictions_sha256"] = "0" * 64
    (tmp_path / "forged.json").write_text(json.dumps(forged))
    with pytest.raises(SystemExit) as err:
        recipe.main(["--rerun", str(tmp_path / "forged.json"), "--cache_dir", str(root / "cache")])
    assert err.value.code == 1


def test_render_only_rebuilds_the_report(ran, capsys):
    root, results, _ = ran
    (results / "README.md").unlink()
    recipe.main(_argv(root, results, "--render_only"))
    assert "| MRL |" in (results / "README.md").read_text()
    assert "to run" not in capsys.readouterr().out


def test_summary_gain_and_checks_on_known_numbers():
    def rec(method, setting, seed, acc):
        return {
            "key": {"method": method, "setting": setting, "labeled_per_class": 10, "seed": seed},
            "accuracy": acc,
            "pool": {"ids": ["t0", "t1"]},
            "teachers": {"accuracy": [0.5, 0.5]},
            "wall_time_s": 1.0,
        }

    table = {"supervised": (0.50, 0.60), "mr-bs": (0.70, 0.60), "mrl": (0.80, 0.75), "oracle": (0.90, 0.80)}
    records = [
        rec(m, s, seed, a + 0.01 * seed)
        for m, accs in table.items()
        for s, a in zip("MU", accs, strict=True)
        for seed in (0, 1)
    ]
    s = summarise(records)
    assert s["settings"] == ["M", "U"]
    assert s["main"]["mrl"]["M"]["mean"] == pytest.approx(80.5)
    assert s["ave_gain"]["mrl"]["mean"] == pytest.approx(22.5)  # ((80 - 50) + (75 - 60)) / 2
    assert s["ave_gain"]["mr-bs"]["mean"] == pytest.approx(10.0)
    assert s["best"] == {"M": "mrl", "U": "mrl", "Ave. Gain": "mrl"}  # oracle is higher but not ranked
    checks = {c["check"]: c["ok"] for c in s["checks"]}
    assert checks["MRL has the best average gain"]
    assert checks["MRL never below Supervised on any (setting, seed) pair"]
    assert not checks["MRL's average gain within 2 points of oracle routing's"]


def test_spec_refuses_per_run_fields():
    with pytest.raises(ValueError, match="method"):
        BenchmarkSpec(train={"method": "mrl"})
    with pytest.raises(ValueError, match="max_steps"):
        BenchmarkSpec(train={"max_steps": 0})


@pytest.mark.slow
def test_two_workers_give_the_records_of_one(slice_, tmp_path):
    """Parallelism never changes a result: the same runs in two spawned workers give the same predictions."""
    one, two = tmp_path / "one", tmp_path / "two"
    recipe.main(_argv(slice_, one, "--methods", "supervised,mrl", "--budgets", ""))
    recipe.main(_argv(slice_, two, "--methods", "supervised,mrl", "--budgets", "", "--workers", "2"))
    a = {json.dumps(r["key"]): r["predictions_sha256"] for r in load_records(one)}
    b = {json.dumps(r["key"]): r["predictions_sha256"] for r in load_records(two)}
    assert a == b and len(a) == 4


@pytest.mark.slow
def test_quick_mode_on_digits_ld(tmp_path):
    """The real Digits-LD path (builds or reuses the teacher pool, minutes on a fresh machine)."""
    summary = recipe.main(
        ["--quick", "--results_dir", str(tmp_path), "--settings", "U", "--methods", "supervised,mrl"]
        + ["--budgets", "", "--max_steps", "3", "--workers", "1"]
    )
    assert set(summary["main"]) == {"supervised", "mrl"} and summary["settings"] == ["U"]
    assert summary["teacher_domain_accuracy"]["U"]


def test_rerun_accepts_a_moved_pool_and_refuses_other_weights(ran, tmp_path):
    import shutil

    root, results, _ = ran
    path = next((results / RECORDS_DIR).glob("mr-bs__B__n2__s0__*.json"))
    for name in ("teacher-hf", "teacher-timm"):
        shutil.copytree(root / name, tmp_path / "moved" / name)
    (tmp_path / "moved" / "pool.txt").write_text("teacher-hf\nteacher-timm\n")
    cache = ["--cache_dir", str(tmp_path / "cache")]
    out = recipe.main(["--rerun", str(path), "--pool", str(tmp_path / "moved" / "pool.txt"), *cache])
    assert out["match"]
    make_timm_teacher(tmp_path / "other" / "teacher-timm", ["a", "b", "c"], seed=7)
    shutil.copytree(root / "teacher-hf", tmp_path / "other" / "teacher-hf")
    (tmp_path / "other" / "pool.txt").write_text("teacher-hf\nteacher-timm\n")
    with pytest.raises(ValueError, match="weights differ"):
        recipe.main(["--rerun", str(path), "--pool", str(tmp_path / "other" / "pool.txt"), *cache])


def test_tasks_keep_a_dataset_together_but_share_the_tail():
    from harness import make_tasks

    keys = plan_runs(settings=["M", "U", "S", "MU", "MS", "US", "MUS"], seeds=[0, 1], budgets=[])
    tasks = make_tasks(keys, workers=2)
    assert sorted(k for t in tasks for k in t) == sorted(keys)
    assert all(len({k.dataset_key for k in t}) == 1 for t in tasks)
    assert [len(t) for t in tasks] == [9] * 12 + [5, 4, 5, 4]
    assert [len(t) for t in make_tasks(keys[:18], workers=2)] == [5, 4, 5, 4]
    assert len(make_tasks(keys, workers=1)) == 14


def test_converged_preset_gives_fixmatch_its_mu_and_ema_and_keeps_flag_overrides():
    args = recipe.parse_args(["--converged"])
    assert args.max_steps == 10 * recipe.FULL["max_steps"] == 2500
    assert args.settings == ["MUS", "S"] and args.seeds == [0, 1, 2] and args.budgets == []
    assert args.results_dir == "results/digits_ld_converged"
    spec = recipe.make_spec(args)
    fixmatch, mrl = spec.config("fixmatch", 0), spec.config("mrl", 0)
    assert (fixmatch.batch_size, fixmatch.unlabeled_batch_size, fixmatch.eval_ema_decay) == (32, 7 * 32, 0.999)
    assert (mrl.batch_size, mrl.unlabeled_batch_size, mrl.eval_ema_decay) == (32, 64, 0.0)
    assert spec.config("mean-teacher", 0).unlabeled_batch_size == 64
    assert spec.identity()["method_train"] == {"fixmatch": {"unlabeled_batch_size": 224, "eval_ema_decay": 0.999}}
    title, note = recipe.report_heading(args)
    assert "2500 steps (10x the main table's)" in title and "mu = 7" in note and "decay 0.999" in note
    small = recipe.parse_args(
        ["--converged", "--max_steps", "3", "--batch_size", "4", "--fixmatch_eval_ema_decay", "0"]
    )
    assert small.max_steps == 3 and small.settings == ["MUS", "S"]
    spec = recipe.make_spec(small)
    assert spec.config("fixmatch", 0).unlabeled_batch_size == 28 and spec.config("fixmatch", 0).eval_ema_decay == 0
    with pytest.raises(SystemExit):
        recipe.parse_args(["--converged", "--quick"])
    with pytest.raises(SystemExit):
        recipe.parse_args(["--converged", "--fixmatch_mu", "0"])


def test_full_preset_has_no_overrides_and_its_caption_states_the_budget():
    from harness import budget_text

    spec = recipe.make_spec(recipe.parse_args([]))
    assert spec.method_train == {} and "method_train" not in spec.identity()  # the main table's hash is unchanged
    text = budget_text(spec.identity())
    assert "250 steps per run, batches of 32 labeled + 64 unlabeled" in text
    assert "FixMatch: mu = 2 (64 unlabeled per 32 labeled), no EMA (its last iterate is evaluated)" in text
    assert "mean teacher: evaluated with its EMA (teacher) weights, decay 0.99" in text
    converged = budget_text(recipe.make_spec(recipe.parse_args(["--converged"])).identity())
    assert "2500 steps per run" in converged
    assert "FixMatch: mu = 7 (224 unlabeled per 32 labeled), evaluated with an EMA of its weights (decay 0.999)" in (
        converged
    )


def test_method_overrides_are_validated_and_an_override_equal_to_the_shared_value_is_dropped():
    with pytest.raises(ValueError, match="unknown methods"):
        BenchmarkSpec(method_train={"nope": {"max_steps": 2}})
    with pytest.raises(ValueError, match="seed"):
        BenchmarkSpec(method_train={"fixmatch": {"seed": 2}})
    with pytest.raises(ValueError, match="eval_ema_decay"):
        BenchmarkSpec(method_train={"mrl": {"eval_ema_decay": 0.9}})  # FixMatch's only
    same = BenchmarkSpec(train={"unlabeled_batch_size": 64}, method_train={"fixmatch": {"unlabeled_batch_size": 64}})
    assert same.method_train == {} and same.identity() == BenchmarkSpec(train={"unlabeled_batch_size": 64}).identity()


def test_records_of_older_configs_rebuild_with_new_fields_at_their_defaults():
    from harness import _same_config

    from hf_mrl import MRLConfig

    config = MRLConfig(method="fixmatch")
    old = {k: v for k, v in config.to_dict().items() if k != "eval_ema_decay"}  # written before the field existed
    assert _same_config(config, old) and _same_config(config, config.to_dict())
    assert not _same_config(MRLConfig(method="fixmatch", eval_ema_decay=0.5), old)
    assert not _same_config(config, {**old, "max_steps": 7})


def test_fixmatch_overrides_enter_the_records_the_hash_the_caption_and_rerun(slice_, ran, tmp_path):
    root, main_results, _ = ran
    results = tmp_path / "conv"
    argv = _argv(root, results, "--methods", "supervised,fixmatch", "--settings", "A", "--budgets", "")
    argv += ["--fixmatch_mu", "3", "--fixmatch_eval_ema_decay", "0.9"]
    with one_torch_thread():
        recipe.main(argv)
    records = {r["key"]["method"]: r for r in load_records(results)}
    fixmatch, supervised = records["fixmatch"], records["supervised"]
    assert fixmatch["config"]["unlabeled_batch_size"] == 3 * 4 and fixmatch["config"]["eval_ema_decay"] == 0.9
    assert supervised["config"]["unlabeled_batch_size"] == 8 and supervised["config"]["eval_ema_decay"] == 0.0
    overrides = {"fixmatch": {"unlabeled_batch_size": 12, "eval_ema_decay": 0.9}}
    assert fixmatch["benchmark"]["method_train"] == supervised["benchmark"]["method_train"] == overrides
    assert fixmatch["bench_hash"] not in {r["bench_hash"] for r in load_records(main_results)}
    readme = (results / "README.md").read_text()
    assert "FixMatch: mu = 3 (12 unlabeled per 4 labeled), evaluated with an EMA of its weights (decay 0.9)" in readme
    path = next((results / RECORDS_DIR).glob("fixmatch__A__n2__s0__*.json"))
    out = recipe.main(["--rerun", str(path), "--cache_dir", str(root / "cache")])
    assert out["match"] and out["record"]["config"] == fixmatch["config"]
    assert out["record"]["bench_hash"] == fixmatch["bench_hash"]
