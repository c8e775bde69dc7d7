"""`benchmarks/ablations.py`: the variants it runs and the page it renders (the runs are the benchmark's)."""

from __future__ import annotations

import json
from argparse import Namespace

import pytest
from helpers import load_recipe

from hf_mrl import MRLConfig


@pytest.fixture(scope="module")
def ablations():
    return load_recipe("ablations")


def test_every_variant_is_a_valid_config_and_distinct_variants_get_distinct_folders(ablations):
    slugs = {}
    for table, variants in ablations.ABLATIONS.items():
        for name, changes in variants:
            changes = {k: ("pixels" if v == "<encoder>" else v) for k, v in changes.items()}
            MRLConfig(**{**ablations.TRAIN, **changes})  # raises on an invalid combination
            slug = ablations._slug(changes)
            assert slugs.setdefault(slug, changes) == changes, (table, name)
    assert ablations._slug({}) == "default"
    # Each table but unroll_steps starts from the default, so they share its records.
    assert all(v[0][1] == {} for t, v in ablations.ABLATIONS.items() if t != "unroll_steps")


def test_unknown_tables_are_refused(ablations):
    with pytest.raises(SystemExit):
        ablations.parse_args(["--only", "nope"])


def test_render_bolds_the_best_validation_and_keeps_the_wall_time(ablations, tmp_path):
    rows = {
        "outer_every": [
            {"variant": "5", "changes": {}, "runs": 3, "validation": (0.9, 0.01), "test": (0.8, 0.02),
             "reuse_test": None, "train_s": (10.0, 1.0)},
            {"variant": "10", "changes": {"outer_every": 10}, "runs": 3, "validation": (0.95, 0.01),
             "test": (0.85, 0.02), "reuse_test": None, "train_s": None},
        ]
    }  # fmt: skip
    args = Namespace(seeds=[0, 1, 2], max_steps=250, setting="MUS", render_only=False)
    ablations._render(tmp_path, rows, args, wall=120.0)
    page = (tmp_path / "README.md").read_text()
    assert "| 10 | **95.0 ± 1.0** | 85.0 ± 2.0 | n/a | n/a | 3 |" in page
    assert "| 5 | 90.0 ± 1.0 |" in page and "2.0 min" in page
    assert json.loads((tmp_path / "summary.json").read_text())["wall_time_s"] == 120.0
    args.render_only = True
    ablations._render(tmp_path, rows, args, wall=0.0)  # a re-render keeps the wall time of the real run
    assert "2.0 min" in (tmp_path / "README.md").read_text()


def test_bilevel_variants_are_valid_distinct_and_independent_of_the_defaults(ablations):
    slugs = set()
    for scenario in ablations.SCENARIOS:
        for _name, changes, spec in ablations.bilevel_specs(scenario, 250):
            MRLConfig(**spec.train)  # raises on an invalid combination
            assert {"outer_labels", "prototype_init"} <= set(changes)  # rows never read a default that may change
            slugs.add((scenario, ablations._slug(changes)))
    assert len(slugs) == len(ablations.SCENARIOS) * len(ablations.BILEVEL)
    frozen = ablations.BILEVEL[0][1]
    assert frozen["outer_lr"] <= 1e-8 and frozen["prototype_init"] == "labeled"
    args = ablations.parse_args(["--only", "bilevel", "--scenarios", "mus2,pixels2"])
    assert args.tables == ["bilevel"] and args.scenarios == ["mus2", "pixels2"]
    with pytest.raises(SystemExit):
        ablations.parse_args(["--only", "bilevel", "--scenarios", "nope"])


def test_records_written_before_the_outer_fields_still_match_at_the_old_defaults(ablations):
    identity = ablations._spec({}, 250).identity()
    old = {**identity, "train": {k: v for k, v in identity["train"].items() if k not in ablations.NEW_FIELDS}}
    if all(identity["train"][k] == v for k, v in ablations.NEW_FIELDS.items()):
        assert ablations._same_benchmark(old, identity)
    heldout = ablations._spec({"outer_labels": "heldout"}, 250).identity()
    assert not ablations._same_benchmark(old, heldout)


def test_bilevel_page_pairs_each_variant_with_frozen_by_seed(ablations, tmp_path):
    def row(name, val, test):
        return ablations._bilevel_row(
            name,
            {},
            [
                {"key": {"seed": s}, "unlabeled_accuracy": v, "accuracy": t, "attention": {"in_domain_routing": 0.8},
                 "final_losses": {"proto_l2_from_init": 0.5, "proto_cos_to_init": float("nan")}, "train_time_s": 1.0}
                for s, (v, t) in enumerate(zip(val, test, strict=True))
            ],
        )  # fmt: skip

    rows = {
        "mus2": [row("frozen", [0.50, 0.60, 0.70], [0.5, 0.6, 0.7]), row("on", [0.60, 0.70, 0.80], [0.5, 0.6, 0.7])]
    }
    args = Namespace(seeds=[0, 1, 2], max_steps=250, scenarios=["mus2"], render_only=False)
    ablations._render_bilevel(tmp_path, rows, args, wall=60.0)
    page = (tmp_path / "README.md").read_text()
    # +10 points on every seed: a paired gain without spread, but not more than frozen's 10-point seed std.
    assert "| on | 10.0 ± 0.0 | 0.0 ± 0.0 | 10.0 / 10.0 | no |" in page
    assert "| on | **70.0 ± 10.0** |" in page and "| 80.0 ± 0.0 | 0.50 ± 0.00 |" in page
    assert "| 0.50 ± 0.00 | n/a | n/a |" in page  # a NaN movement (zero init) is not averaged
