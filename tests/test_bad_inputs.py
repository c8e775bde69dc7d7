"""Bad input gets a clear error before any long work: through the Python API and through the recipe's CLI.

Each CLI case runs `recipes/train_mrl.py`'s `main()` in this process (a subprocess per case would cost seconds
each) with the stage after the expected failure replaced by a tripwire, so a check that fires too late fails the
test; `test_cli_errors_are_one_line_without_traceback` runs two of them as real subprocesses.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
from helpers import make_target_dataset, make_timm_teacher, make_transformers_teacher
from huggingface_hub import HfApi
from safetensors.torch import load_file, save_file

import hf_mrl.cli.train as cli_train
import hf_mrl.training.reuse_trainer as reuse_trainer
from hf_mrl import AttentionReuser, ModelPool, Teacher
from hf_mrl.data.target import check_dataset, load_target, target_from_datasets
from hf_mrl.pool.labels import map_labels
from hf_mrl.pool.model_pool import TeacherLoadError, parse_pool_file

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "train_mrl.py"
LABELS = ["a", "b", "c"]


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_weights(folder: Path, change) -> Path:
    state = load_file(folder / "model.safetensors")
    change(state)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture(scope="module")
def bad(tiny, tmp_path_factory):
    """Broken teachers and datasets next to the valid `tiny` task."""
    from transformers import ResNetConfig, ResNetModel

    root = tmp_path_factory.mktemp("bad")
    hf = Path(tiny["pool"]).parent / "teacher-hf"
    tm = Path(tiny["pool"]).parent / "teacher-timm"
    t = {}
    config = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 8], depths=[1, 1], layer_type="basic")
    ResNetModel(config).save_pretrained(root / "backbone")
    t["backbone"] = root / "backbone"
    t["birds"] = make_transformers_teacher(root / "birds", ["sparrow", "eagle"])
    t["generic"] = make_transformers_teacher(root / "generic", ["LABEL_0", "LABEL_1", "LABEL_2"])

    def nan_classifier(state):
        key = next(k for k in state if k.startswith("classifier") and k.endswith("weight"))
        state[key][0, 0] = float("nan")

    t["nan"] = _edit_weights(_copy(hf, root / "nan"), nan_classifier)

    def overflowing(state):  # finite weights whose outputs overflow to inf on any input
        for key in [k for k in state if k.startswith("classifier")]:
            state[key] = torch.full_like(state[key], torch.finfo(torch.float32).max)

    t["inf"] = _edit_weights(_copy(hf, root / "inf"), overflowing)
    t["corrupt_hf"] = _copy(hf, root / "corrupt-hf")
    _truncate(t["corrupt_hf"] / "model.safetensors")
    t["corrupt_timm"] = _copy(tm, root / "corrupt-timm")
    (t["corrupt_timm"] / "model.safetensors").write_bytes(b"not safetensors at all")
    t["pickle"] = _copy(hf, root / "pickle")
    torch.save(load_file(t["pickle"] / "model.safetensors"), t["pickle"] / "pytorch_model.bin")
    (t["pickle"] / "model.safetensors").unlink()

    dd = datasets.load_from_disk(str(tiny["data"]))
    d = {"memory": dd}

    def save(name, value):
        path = root / f"data-{name}"
        value.save_to_disk(str(path))
        d[name] = path
        d[f"{name}-memory"] = value

    save("no-image", dd.rename_column("image", "picture"))
    save("no-label", dd.remove_columns("label"))
    save("empty-labeled", datasets.DatasetDict({**dd, "labeled": dd["labeled"].select([])}))
    save("class-unlabeled", datasets.DatasetDict({**dd, "labeled": dd["labeled"].filter(lambda e: e["label"] != 2)}))
    save("int-labels", dd.cast_column("label", datasets.Value("int64")))
    missing = (
        dd["test"]
        .cast_column("label", datasets.Value("int64"))
        .map(lambda e, i: {"label": -1 if i == 3 else e["label"]}, with_indices=True)
    )
    missing = missing.cast_column("label", dd["test"].features["label"])
    save("missing-test-label", datasets.DatasetDict({**dd, "test": missing}))
    strings = dd.map(lambda e: {"text": "x"}).remove_columns("image").rename_column("text", "image")
    save("text-images", strings)
    save("single", dd["labeled"])
    d["generic"] = make_target_dataset(root / "data-generic", label_names=["LABEL_0", "LABEL_1", "LABEL_2"], size=16)
    return {"root": root, "teachers": t, "data": d, "tiny": tiny}


def _pool(root: Path, name: str, *lines: str) -> Path:
    path = root / f"{name}.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


class _Tripwire:
    """Stands in for a stage that must not run: reached, it fails the test (an AssertionError is not caught)."""

    def __init__(self, stage: str):
        self.stage = stage

    def __call__(self, *args, **kwargs):
        raise AssertionError(f"{self.stage} ran before the bad input was reported")

    def __getattr__(self, name):
        return self


def _argv(bad, out: Path, pool=None, data=None, *extra: str) -> list[str]:
    tiny = bad["tiny"]
    argv = ["--pool", str(pool or tiny["pool"]), "--dataset", str(data or tiny["data"]), "--output_dir", str(out)]
    argv += ["--max_steps", "2", "--batch_size", "4", "--unlabeled_batch_size", "8", "--image_size", "16"]
    return argv + ["--cache_dir", str(bad["root"] / "cache"), "--no_progress", *extra]


def run_cli(recipe, monkeypatch, argv: list[str], before: str = "training") -> str:
    """`main(argv)` must exit with one line `error: ...` before `before` (training, teachers or images) starts."""
    with monkeypatch.context() as patch:
        patch.setattr(reuse_trainer, "StudentTrainer", _Tripwire("training"))
        if before in ("teachers", "images"):
            patch.setattr(cli_train, "load_target", _Tripwire("image decoding"))
        if before == "teachers":
            patch.setattr(cli_train, "ModelPool", _Tripwire("teacher loading"))
        with pytest.raises(SystemExit) as exit_info:
            recipe.main(argv)
    message = exit_info.value.code
    assert isinstance(message, str) and message.startswith("error: "), message
    assert "\n" not in message and "Traceback" not in message
    return message


# ----------------------------------------------------------------------------------------------- the CLI, case by case

# (case, pool lines or None for the tiny pool, dataset key or None, extra args, words in the message, checked before)
POOL_CASES = [
    ("empty pool file", ["# nothing here"], None, [], "lists no teacher", "teachers"),
    ("malformed revision", ["org/name@"], None, [], ":1: Malformed teacher id 'org/name@'", "teachers"),
    ("two ids on a line", ["org/a org/b"], None, [], ":1: malformed entry", "teachers"),
    (
        "duplicate ids",
        ["org/a", "org/b", "org/a@main", "org/a"],
        None,
        [],
        ":4: duplicate teacher 'org/a'",
        "teachers",
    ),
    (
        "neither a folder nor an id",
        ["./no-such-folder"],
        None,
        [],
        "no such folder",  # a path, never taken for a Hub id
        "teachers",
    ),
]
DATA_CASES = [
    ("no image column", "no-image", "Split 'labeled' has no column 'image'"),
    ("no label column", "no-label", "Split 'labeled' has no column 'label'"),
    ("empty labeled split", "empty-labeled", "Split 'labeled' of"),
    ("a class without labels", "class-unlabeled", "Classes ['c'] have no labeled sample"),
    ("labels not a ClassLabel", "int-labels", "must be a datasets.ClassLabel"),
    ("a test sample without label", "missing-test-label", "Split 'test' has 1 sample(s) without a valid label"),
    ("image column holds text", "text-images", "holds Value('string'), not images"),
    ("a Dataset, not a DatasetDict", "single", "single Dataset"),
]
TEACHER_CASES = [
    ("not a classifier", "backbone", "is not an image classifier"),
    ("no shared label", "birds", "shares no label with the target task"),
    ("NaN in the weights", "nan", "has NaN or infinite values in its weights (classifier.1.weight)"),
    ("truncated transformers weights", "corrupt_hf", "has a corrupted model.safetensors"),
    ("garbage timm weights", "corrupt_timm", "has a corrupted model.safetensors"),
    ("pickle-only weights", "pickle", "only has pickle weights (pytorch_model.bin)"),
]


@pytest.mark.parametrize(
    ("case", "lines", "data", "extra", "words", "before"), POOL_CASES, ids=[c[0] for c in POOL_CASES]
)
def test_cli_pool_file_errors(recipe, bad, tmp_path, monkeypatch, case, lines, data, extra, words, before):
    pool = _pool(tmp_path, "pool", *lines)
    message = run_cli(recipe, monkeypatch, _argv(bad, tmp_path / "out", pool, data, *extra), before)
    assert words in message and str(pool) in message


def test_cli_binary_pool_file(recipe, bad, tmp_path, monkeypatch):
    pool = tmp_path / "pool.txt"
    pool.write_bytes(b"\xff\xfe\x00org/a\n")
    message = run_cli(recipe, monkeypatch, _argv(bad, tmp_path / "out", pool), "teachers")
    assert "is not a UTF-8 text file" in message


@pytest.mark.parametrize(("case", "data", "words"), DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_cli_dataset_errors(recipe, bad, tmp_path, monkeypatch, case, data, words):
    message = run_cli(recipe, monkeypatch, _argv(bad, tmp_path / "out", None, bad["data"][data]), "teachers")
    assert words in message


@pytest.mark.parametrize(("case", "teacher", "words"), TEACHER_CASES, ids=[c[0] for c in TEACHER_CASES])
def test_cli_teacher_errors(recipe, bad, tmp_path, monkeypatch, case, teacher, words):
    pool = _pool(tmp_path, "pool", str(bad["teachers"][teacher]))
    message = run_cli(recipe, monkeypatch, _argv(bad, tmp_path / "out", pool), "images")
    assert words in message and str(bad["teachers"][teacher]) in message


def test_cli_generic_labels_on_both_sides_have_no_mapping(recipe, bad, tmp_path, monkeypatch):
    pool = _pool(tmp_path, "pool", str(bad["teachers"]["generic"]))
    argv = _argv(bad, tmp_path / "out", pool, bad["data"]["generic"])
    message = run_cli(recipe, monkeypatch, argv, "images")
    assert "placeholder label names" in message and "id2label" in message


def test_cli_infinite_teacher_logits(recipe, bad, tmp_path, monkeypatch):
    pool = _pool(tmp_path, "pool", str(bad["teachers"]["inf"]))
    message = run_cli(recipe, monkeypatch, _argv(bad, tmp_path / "out", pool), "training")
    assert "produced NaN or infinite logits" in message and str(bad["teachers"]["inf"]) in message


def test_cli_labeled_per_class_above_what_the_data_hold(recipe, bad, tmp_path, monkeypatch):
    message = run_cli(
        recipe, monkeypatch, _argv(bad, tmp_path / "out", None, None, "--labeled_per_class", "3"), "teachers"
    )
    assert "labeled_per_class=3 is more than the labeled split holds" in message and "only 2" in message


@pytest.mark.parametrize(
    ("flag", "value"), [("--labeled_per_class", "0"), ("--max_steps", "0"), ("--checkpointing_steps", "-1")]
)
def test_cli_out_of_range_numbers_are_argument_errors(recipe, bad, tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as exit_info:
        recipe.main(_argv(bad, tmp_path / "out", None, None, flag, value))
    assert exit_info.value.code == 2
    assert f"{flag} must be >=" in capsys.readouterr().err


def test_cli_unknown_dataset_and_embedding(recipe, bad, tmp_path, monkeypatch):
    message = run_cli(recipe, monkeypatch, _argv(bad, tmp_path / "out", None, tmp_path / "nowhere"), "teachers")
    assert f"no such folder '{tmp_path / 'nowhere'}'" in message, message
    message = run_cli(recipe, monkeypatch, _argv(bad, tmp_path / "o2", None, None, "--embedding", "nope"), "teachers")
    assert "Unknown embedding 'nope'" in message
    message = run_cli(
        recipe, monkeypatch, _argv(bad, tmp_path / "o3", None, None, "--embedding", "encoder:./nope"), "images"
    )
    assert "Encoder './nope' was not found" in message


def test_cli_hub_id_or_revision_that_does_not_exist(recipe, bad, local_hub, tmp_path, monkeypatch):
    api = HfApi()
    api.create_repo("org/real")
    api.upload_folder(repo_id="org/real", folder_path=str(bad["tiny"]["pool"].parent / "teacher-timm"))
    for line, words in [
        ("org/does-not-exist", "'org/does-not-exist' was not found"),
        ("org/real@no-such-branch", "has no revision 'no-such-branch'"),
    ]:
        pool = _pool(tmp_path, "pool", line)
        message = run_cli(recipe, monkeypatch, _argv(bad, tmp_path / "out", pool), "images")
        assert words in message


def test_cli_errors_are_one_line_without_traceback(bad, tmp_path):
    """The real command line on an error from deep inside a library (safetensors): exit status 1, one `error:`
    line on stderr, no traceback. (tests/test_recipe.py does the same for a bad pool file.)"""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    pool = _pool(tmp_path, "pool", str(bad["teachers"]["corrupt_hf"]))
    cmd = [sys.executable, str(RECIPE), *_argv(bad, tmp_path / "out", pool)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "has a corrupted model.safetensors" in last, proc.stderr[-2000:]


# ----------------------------------------------------------------------------------------------- the Python API


def test_pool_file_parser_names_file_and_line(tmp_path):
    (tmp_path / "folder").mkdir()
    with pytest.raises(ValueError, match="is a folder"):
        parse_pool_file(tmp_path / "folder")
    pool = _pool(tmp_path, "p", "org/a", "", "org/b@")
    with pytest.raises(ValueError, match=r"p\.txt:3: Malformed teacher id"):
        parse_pool_file(pool)
    pool = _pool(tmp_path, "q", "x" * 300)  # longer than a file name may be: not a crash, a Hub-id error
    with pytest.raises(ValueError, match=r"q\.txt:1: .* neither an existing folder nor a Hub id"):
        parse_pool_file(pool)


def test_teacher_load_errors_say_which_and_why(bad):
    t = bad["teachers"]
    for name, reason, words in [
        ("corrupt_hf", "corrupted_weights", "corrupted model.safetensors"),
        ("corrupt_timm", "corrupted_weights", "corrupted model.safetensors"),
        ("nan", "corrupted_weights", "NaN or infinite values"),
        ("pickle", "unsafe_weights", "pickle"),
        ("backbone", "no_classification_head", "not an image classifier"),
    ]:
        with pytest.raises(TeacherLoadError, match=words) as err:
            Teacher.load(str(t[name]))
        assert err.value.reason == reason and err.value.teacher == str(t[name])
    with pytest.raises(TeacherLoadError, match="is a file"):
        Teacher.load(str(t["nan"] / "config.json"))


def test_infinite_logits_name_the_teacher(bad):
    pool = ModelPool([str(bad["teachers"]["inf"])], LABELS)
    with pytest.raises(ValueError, match="produced NaN or infinite logits"):
        pool.probs(torch.full((2, 3, 16, 16), 200, dtype=torch.uint8))


def test_generic_names_on_both_sides_are_no_mapping():
    with pytest.raises(ValueError, match="placeholder label names"):
        map_labels(["LABEL_0", "LABEL_1"], ["LABEL_0", "LABEL_1"], teacher_name="Teacher 'org/anon'")
    with pytest.raises(ValueError, match="target's labels are generic"):
        map_labels(["cat", "dog"], ["LABEL_0", "LABEL_1"])
    with pytest.raises(ValueError, match="has no label names"):
        map_labels([], ["cat"], teacher_name="Teacher 'org/empty'")
    # Generic on one side only is fine when the names really match.
    assert map_labels(["LABEL_0", "cat"], ["cat"]).index == [1]


def test_a_class_no_teacher_covers_is_a_warning(bad, caplog):
    """Teachers with partial label spaces are accepted; a target class none of them knows is warned about."""
    folder = make_timm_teacher(bad["root"] / "partial", ["a", "b"])
    with caplog.at_level(logging.WARNING, logger="hf_mrl.pool.model_pool"):
        pool = ModelPool([str(folder)], LABELS)
    assert pool.coverage.tolist() == [[True, True, False]]
    assert any("No teacher in the pool predicts target class(es) ['c']" in r.getMessage() for r in caplog.records)


def test_ambiguous_teacher_labels_are_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="hf_mrl.pool.labels"):
        mapping = map_labels(["Crane", "crane", "heron"], ["crane", "heron"], teacher_name="Teacher 'org/birds'")
    assert mapping.index == [0, 2]
    assert any("two outputs named like target class 'crane'" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(("data", "words"), [(k, w) for _, k, w in DATA_CASES if k != "empty-labeled"])
def test_dataset_errors_in_memory(bad, data, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        target_from_datasets(bad["data"][f"{data}-memory"], image_size=16)


def test_empty_splits_in_memory(bad):
    dd = bad["data"]["memory"]
    for split in ("labeled", "unlabeled", "test"):
        empty = datasets.DatasetDict({**dd, split: dd[split].select([])})
        with pytest.raises(ValueError, match=f"Split '{split}' is empty"):
            check_dataset(empty)


def test_splits_must_share_one_class_label(bad):
    dd = bad["data"]["memory"]
    test = dd["test"].cast_column("label", datasets.ClassLabel(names=["x", "y", "z"]))
    with pytest.raises(ValueError, match="must share one ClassLabel"):
        check_dataset(datasets.DatasetDict({**dd, "test": test}))


def test_labeled_per_class_subsamples_a_folder_or_refuses(bad):
    data, _ = load_target(str(bad["tiny"]["data"]), 1, 0, image_size=16)
    assert sorted(data.labeled_labels.tolist()) == [0, 1, 2]
    again, _ = load_target(str(bad["tiny"]["data"]), 1, 0, image_size=16)
    assert torch.equal(data.labeled_images[:], again.labeled_images[:])  # seeded
    with pytest.raises(ValueError, match="labeled_per_class=5 is more than the labeled split holds"):
        load_target(str(bad["tiny"]["data"]), 5, 0, image_size=16)


# ----------------------------------------------------------------------------------------------- a saved reuser


def _saved_reuser(folder: Path, **kwargs) -> Path:
    AttentionReuser(["org/a@1", "org/b@2"], LABELS, embed_dim=6, **kwargs).save_pretrained(folder)
    return folder


def _edit_config(folder: Path, **changes) -> Path:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda d: _truncate(d / "model.safetensors"), "model.safetensors of .* is corrupted"),
        (lambda d: (d / "config.json").write_text("[1, 2]"), "is not a JSON object"),
        (lambda d: (d / "config.json").write_text("{oops"), "is not valid JSON"),
        (lambda d: _edit_config(d, format_version=99), "format version 99, newer than this hf_mrl understands"),
        (lambda d: _edit_config(d, format_version="1"), "format_version must be a positive integer"),
        (lambda d: _edit_config(d, format_version=0), "format_version must be a positive integer"),
        (lambda d: _edit_config(d, teachers="org/a@1"), "teachers must be a list"),
        (lambda d: _edit_config(d, embed_dim=7), r"embed_dim=7, but its 'teacher-outputs' embedding gives 6"),
        (
            lambda d: _edit_config(d, embedding={"type": "pixels", "dim": 6}, teachers=["org/a@1", "b", "c"]),
            r"has shape \[2\] in model.safetensors but \[3\] from config.json \(3 teachers",
        ),
        (
            lambda d: _edit_weights(d, lambda s: s["prototypes"].fill_(float("nan"))),
            r"contain NaN or infinite values \(prototypes\)",
        ),
        (lambda d: _edit_weights(d, lambda s: s.pop("bias")), r"lacks \['bias'\]"),
    ],
    ids=[
        "truncated",
        "config-list",
        "config-json",
        "newer",
        "str-version",
        "zero-version",
        "teachers-str",
        "embed-dim",
        "shape",
        "nan",
        "missing-key",
    ],
)
def test_broken_saved_reuser_is_refused(tmp_path, change, words):
    folder = _saved_reuser(tmp_path / "r")
    change(folder)
    with pytest.raises(ValueError, match=words):
        AttentionReuser.from_pretrained(folder)


def test_a_teacher_is_not_a_reuser(bad):
    with pytest.raises(ValueError, match="lists no teachers.*a teacher or a student checkpoint"):
        AttentionReuser.from_pretrained(bad["teachers"]["birds"])
    with pytest.raises(ValueError, match="no such local folder, and not a Hub repo id"):
        AttentionReuser.from_pretrained("./no/such/reuser")
