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
