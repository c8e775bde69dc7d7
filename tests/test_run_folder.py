"""Run folders that cannot be turned against the user, and that a full disk or a kill never leaves without one run.

- A pickle planted in a checkpoint never runs on resume (a marker file never appears); resume refuses it.
- A full disk while saving (a real small tmpfs, and a writer that raises ENOSPC at each write in turn) leaves the
  folder holding the previous complete run, nothing behind that keeps the disk full, and an error naming the folder.
- A kill at any rename of the swap is finished by the next reader: the folder then holds the new run whole.
- `hf-mrl push` and `hf-mrl evaluate` refuse a folder that is not one complete run, in one line.
- Outputs follow the user's umask; a deeply nested JSON file is refused before any work.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from helpers import make_labeled_images

import hf_mrl.training.run_folder as run_folder
from hf_mrl import AttentionReuser, MRLConfig, StudentTrainer, TargetData, utils
from hf_mrl.hub.cards import RunSummary, TeacherSummary
from hf_mrl.record import Delivered, RunMetrics
from hf_mrl.training.checkpoint import CheckpointError
from hf_mrl.training.reuse_trainer import ReuseResult
from hf_mrl.training.run_folder import IncompleteRunError, verify_run
from hf_mrl.training.student import create_student
from hf_mrl.training.trainer import latest_checkpoint
from hf_mrl.utils import DiskFullError

LABELS = ["a", "b", "c"]
TINY_STUDENT = {"architecture": "resnet10t", "model_args": {"channels": [8, 8, 16, 16], "stem_width": 8}}


# ------------------------------------------------------------------------------------------- checkpoints
class _Planted:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _trainer(method: str = "supervised") -> StudentTrainer:
    y = torch.arange(9) % 3
    data = TargetData(
        label_names=list(LABELS),
        labeled_images=make_labeled_images(y, seed=0),
        labeled_labels=y,
        unlabeled_images=make_labeled_images(torch.arange(12) % 3, seed=1),
        test_images=make_labeled_images(torch.arange(6) % 3, seed=2),
        test_labels=torch.arange(6) % 3,
    )
    config = MRLConfig(method=method, max_steps=4, batch_size=6, unlabeled_batch_size=6, checkpoint_every=2)
    return StudentTrainer(config, data, student_spec=TINY_STUDENT)


@pytest.mark.parametrize("name", ["custom_checkpoint_0.pkl", "optimizer.bin", "random_states_0.pkl"])
def test_a_pickle_planted_in_a_checkpoint_never_runs(tmp_path, name):
    _trainer().train(tmp_path / "ckpt", progress=False)
    latest = latest_checkpoint(tmp_path / "ckpt")
    assert latest is not None and not list(latest.glob("*.pkl")) and not list(latest.glob("*.bin"))
    marker = tmp_path / "owned"
    (latest / name).write_bytes(pickle.dumps(_Planted(marker)))
    with pytest.raises(CheckpointError, match=r"pickle files \(" + name.replace(".", r"\.") + r"\).*--allow_pickle"):
        _trainer().train(tmp_path / "ckpt", resume=True, progress=False)
    assert not marker.exists()
    # Allowed: the file is reported and ignored, never unpickled; the run resumes from its own state.
    resumed = _trainer()
    resumed.allow_pickle = True
    resumed.train(tmp_path / "ckpt", resume=True, progress=False)
    assert resumed.step.value == 4 and resumed.history == [] and not marker.exists()


def test_a_checkpoint_with_crafted_json_is_refused_cleanly(tmp_path):
    _trainer().train(tmp_path / "ckpt", progress=False)
    latest = latest_checkpoint(tmp_path / "ckpt")
    (latest / "state.json").write_text("[" * 10_000 + "]" * 10_000)
    with pytest.raises(CheckpointError, match="nests deeper"):
        _trainer().train(tmp_path / "ckpt", resume=True, progress=False)


# ------------------------------------------------------------------------------------------- outputs
def _result(seed: int) -> ReuseResult:
    torch.manual_seed(seed)
    student = create_student(LABELS, image_size=16)
    reuser = AttentionReuser(["org/a@1", "org/b@2"], LABELS, embed_dim=6)
    with torch.no_grad():
        reuser.prototypes.normal_(generator=torch.Generator().manual_seed(seed))
    summary = RunSummary(
        teachers=[TeacherSummary("org/a@1"), TeacherSummary("org/b@2")], label_names=LABELS, dataset="tiny"
    )
    metrics = RunMetrics(method="mrl", delivered=Delivered.METHOD, method_student_accuracy=None, extra={"run": seed})
    return ReuseResult("mrl", Delivered.METHOD, student, student, None, reuser, [], None, metrics, summary, {})


def _assert_run(out: Path, seed: int) -> None:
    verify_run(out)
    assert json.loads((out / "metrics.json").read_text())["run"] == seed
    reuser = AttentionReuser.from_pretrained(str(out / "reuser"))
    assert torch.equal(reuser.prototypes, _result(seed).reuser.prototypes)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "metrics.json", "reuser", "student"]


class _Full:
    """Makes the `n`-th write of a run raise ENOSPC, after writing a partial file where the writer makes one."""

    def __init__(self, monkeypatch, n: int):
        self.n, self.calls = n, 0
        for owner, name in (
            (AttentionReuser, "save_pretrained"),
            (__import__("hf_mrl.training.result", fromlist=["x"]), "save_student"),
            (__import__("hf_mrl.training.result", fromlist=["x"]), "atomic_write_json"),
            (run_folder, "write_manifest"),
        ):
            monkeypatch.setattr(owner, name, self._wrap(getattr(owner, name)))

    def _wrap(self, real):
        def writer(*args, **kwargs):
            self.calls += 1
            if self.calls == self.n:
                target = next(a for a in args if isinstance(a, (str, Path)))
                target = Path(target)
                (target if target.suffix == "" else target.parent).mkdir(parents=True, exist_ok=True)
                (target / "partial" if target.suffix == "" else target).write_bytes(b"\0" * 4096)
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(*args, **kwargs)

        return writer


def test_a_full_disk_at_each_write_in_turn_keeps_the_previous_run(tmp_path, monkeypatch):
    out = tmp_path / "run"
    _result(1).save_pretrained(out)
    _assert_run(out, 1)
    writes = 0
    for n in range(1, 10):
        with monkeypatch.context() as m:
            full = _Full(m, n)
            try:
                _result(2).save_pretrained(out)
            except DiskFullError as err:
                assert str(out) in str(err) and "free" in str(err)
                _assert_run(out, 1)  # the previous run, whole; nothing half-written left behind
                continue
            finally:
                writes = max(writes, full.calls)
        _assert_run(out, 2)  # n past the last write: the save went through
        break
    assert writes == 4 and n == 5  # reuser, student, metrics, manifest: each failed once


def test_a_kill_at_each_rename_of_the_swap_is_finished_by_the_next_reader(tmp_path, monkeypatch):
    real = os.replace
    for n in range(1, 20):
        out = tmp_path / f"run{n}"
        _result(1).save_pretrained(out)
        calls = []

        def replace(src, dst, calls=calls, n=n):
            calls.append(dst)
            if len(calls) == n:
                raise KeyboardInterrupt("killed")
            real(src, dst)

        monkeypatch.setattr(run_folder.os, "replace", replace)
        try:
            _result(2).save_pretrained(out)
            killed = False
        except KeyboardInterrupt:
            killed = True
        monkeypatch.setattr(run_folder.os, "replace", real)
        # Killed before the commit point: the old run; after it: the new one. Never a mix.
        committed = any(Path(d).name == run_folder.COMMIT for d in calls[: n - 1]) or not killed
        _assert_run(out, 2 if committed else 1)
        if not killed:
            break
    assert n > 5  # the swap has several renames, and every one of them was interrupted once


def _tmpfs(path: Path, size: str):
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")


def test_a_real_full_disk_keeps_the_previous_run_and_frees_what_it_wrote(tmp_path):
    disk = tmp_path / "disk"
    _tmpfs(disk, "8m")
    try:
        out = disk / "run"
        _result(1).save_pretrained(out)
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        real_usage = shutil.disk_usage
        plenty = lambda p: real_usage(p)._replace(free=1 << 40)  # noqa: E731
        for left in (0, size // 4, size // 2, size - 4096, size + run_folder.SLACK // 2):
            filler = disk / "filler"
            filler.unlink(missing_ok=True)
            free = shutil.disk_usage(disk).free
            with open(filler, "wb") as f:
                f.write(b"\0" * max(0, free - left))
            # First the free-space check refuses; then, past it, the writes themselves hit the full disk.
            for check in ("space check", "writes") if left < size else ("space check",):
                before = shutil.disk_usage(disk).free
                if check == "writes":
                    run_folder.shutil.disk_usage = plenty
                try:
                    with pytest.raises(DiskFullError, match=str(disk)):
                        _result(2).save_pretrained(out)
                finally:
                    run_folder.shutil.disk_usage = real_usage
                assert shutil.disk_usage(disk).free == before  # nothing left behind keeps the disk full
                _assert_run(out, 1)
        (disk / "filler").unlink()
        _result(2).save_pretrained(out)
        _assert_run(out, 2)
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_push_and_evaluate_refuse_a_mixed_folder(tmp_path, capsys):
    from hf_mrl.cli.main import evaluate_main, push_main

    a, b = tmp_path / "a", tmp_path / "b"
    _result(1).save_pretrained(a)
    _result(2).save_pretrained(b)
    shutil.rmtree(a / "student")
    shutil.copytree(b / "student", a / "student")  # a reuser of one run, a student of another
    for main in (lambda: push_main([str(a), "org/x"]), lambda: evaluate_main([str(a)])):
        with pytest.raises(SystemExit) as err:
            main()
        assert "does not hold one complete run" in str(err.value) and "\n" not in str(err.value)
    (a / "manifest.json").unlink()
    (a / "metrics.json").unlink()  # as a kill during an earlier hf_mrl's save left it
    with pytest.raises(IncompleteRunError, match="no manifest.json"):
        verify_run(a)
    with pytest.raises(IncompleteRunError, match="is not a folder"):
        verify_run(tmp_path / "missing")


def test_outputs_follow_the_umask(tmp_path):
    old = os.umask(0o002)
    try:
        _result(1).save_pretrained(tmp_path / "run")
        utils.atomic_write_json(tmp_path / "x.json", {"a": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o664
    assert (tmp_path / "run" / "metrics.json").stat().st_mode & 0o777 == 0o664
    assert (tmp_path / "run" / "student").stat().st_mode & 0o777 == 0o775


def test_json_depth_is_checked_without_recursion():
    utils.check_json_depth('{"a": [1, {"b": "[[[[["}]}', max_depth=3)  # brackets inside strings do not count
    with pytest.raises(ValueError, match="deeper than 3"):
        utils.check_json_depth('{"a": [[{"b": 1}]]}', max_depth=3)
    with pytest.raises(ValueError, match="deeper"):
        utils.check_json_depth("[" * 100_000 + "]" * 100_000)


def test_resume_on_a_replaced_dataset_is_refused(recipe, tiny, tmp_path):
    from helpers import make_target_dataset

    import hf_mrl.cli.main as cli

    data = tmp_path / "data"
    shutil.copytree(tiny["data"], data)
    argv = ["--pool", str(tiny["pool"]), "--dataset", str(data), "--output_dir", str(tmp_path / "run")]
    argv += ["--max_steps", "4", "--checkpointing_steps", "2", "--guard_folds", "0", "--image_size", "16"]
    argv += ["--batch_size", "4", "--unlabeled_batch_size", "4", "--no_progress", "--cache_dir", str(tmp_path / "c")]
    args = recipe.parse_args(argv)
    recipe.preflight(args)
    cli.train(args)
    recorded = json.loads((tmp_path / "run" / "checkpoints" / "run.json").read_text())["fingerprint"]
    assert recorded["data"]["labeled"]["rows"] == tiny["sizes"]["labeled"] and len(recorded["teachers"]) == 2

    resume = recipe.parse_args([*argv, "--resume_from_checkpoint"])
    recipe.preflight(resume)  # the same arguments: only the content tells
    shutil.rmtree(data)
    make_target_dataset(data, n_labeled_per_class=2, n_unlabeled=24, n_test=12, seed=7)
    with pytest.raises(
        ValueError, match=r"the labeled split \(6 rows then, 6 now\) and the unlabeled split .* differ"
    ):
        cli.train(resume)
    shutil.rmtree(data)
    shutil.copytree(tiny["data"], data)
    cli.train(resume)  # the original data again: resumes
