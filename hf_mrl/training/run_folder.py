"""A run's output folder that always holds one complete run: staged whole, verified, then swapped in.

`DIR/reuser/`, `DIR/student/`, `DIR/metrics.json` and `DIR/manifest.json` (the sizes and sha256 of every file of the
run, written last) make one run. Saving:

1. checks the free space for the new run (it is written beside the old one) and stops before writing if it is short;
2. writes the new run whole into `DIR/.hf_mrl-staging/` and its manifest last; a failure (a full disk included)
   removes the staging folder and leaves DIR as it was;
3. re-reads every staged file against the manifest, then renames the staging folder to `DIR/.hf_mrl-commit/`: the
   commit point;
4. moves each old entry to `DIR/.hf_mrl-old/` and the new one in (renames only: no space needed), then removes the
   old run.

A kill at any point leaves either the old run (a staging folder, removed by the next save) or a committed new run
that `recover` finishes moving in; every reader (`verify_run`: push, evaluate) calls it first. So at every instant the
folder holds one complete run, as the manifest proves.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from hf_mrl.utils import check_json_depth, disk_full_error, is_disk_full

__all__ = ["ENTRIES", "MANIFEST", "IncompleteRunError", "recover", "staged_run", "verify_run", "write_manifest"]

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
ENTRIES = ("reuser", "student", "metrics.json", MANIFEST)  # MANIFEST last: what is moved in last
FORMAT = "hf_mrl-run/1"
STAGING, COMMIT, OLD = ".hf_mrl-staging", ".hf_mrl-commit", ".hf_mrl-old"
SLACK = 1 << 20  # cards, configs and filesystem blocks beside the weights


class IncompleteRunError(ValueError):
    """The folder does not hold one complete, consistent run (the message says what is wrong)."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _files(folder: Path) -> list[str]:
    """The run's files under `folder`, relative, sorted (only the run's entries; hidden bookkeeping excluded)."""
    out = []
    for name in ENTRIES:
        p = folder / name
        if name == MANIFEST:
            continue
        if p.is_file():
            out.append(name)
        elif p.is_dir():
            out += sorted(str(f.relative_to(folder)) for f in p.rglob("*") if f.is_file() or f.is_symlink())
    return out


def write_manifest(folder: str | os.PathLike) -> dict:
    """Hash every file of the run in `folder` into `folder/manifest.json` (written last); returns the manifest."""
    folder = Path(folder)
    files = {}
    for rel in _files(folder):
        p = folder / rel
        if p.is_symlink() or not p.is_file():
            raise IncompleteRunError(f"{p} is not a regular file: a run folder holds regular files only.")
        files[rel] = {"size": p.stat().st_size, "sha256": _sha256(p)}
    manifest = {"format": FORMAT, "files": files}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


def _check_against(folder: Path, manifest: dict) -> None:
    files = manifest.get("files")
    if manifest.get("format") != FORMAT or not isinstance(files, dict):
        raise IncompleteRunError(f"{folder / MANIFEST} is not an hf_mrl run manifest.")
    present = set(_files(folder))
    missing, extra = sorted(set(files) - present), sorted(present - set(files))
    if missing or extra:
        what = "; ".join(
            s for s in (missing and f"missing {missing[:3]}", extra and f"not of this run {extra[:3]}") if s
        )
        raise IncompleteRunError(f"{folder} does not hold one complete run: {what}.")
    for rel, info in files.items():
        p = folder / rel
        if p.is_symlink() or not p.is_file():
            raise IncompleteRunError(f"{p} is not a regular file.")
        if p.stat().st_size != info.get("size") or _sha256(p) != info.get("sha256"):
            raise IncompleteRunError(f"{folder} does not hold one complete run: {rel} differs from its manifest.")


def _read_manifest(folder: Path) -> dict:
    text = (folder / MANIFEST).read_text(encoding="utf-8")
    check_json_depth(text, 8, what=str(folder / MANIFEST))
    try:
        return json.loads(text)
    except ValueError as err:
        raise IncompleteRunError(f"{folder / MANIFEST} is unreadable ({err}).") from None


def recover(out: str | os.PathLike) -> None:
    """Finish a swap that a kill interrupted (the committed new run moves in) and remove staging leftovers."""
    out = Path(out)
    commit, old = out / COMMIT, out / OLD
    if commit.is_dir():
        if (commit / MANIFEST).is_file():  # moved in last: while it is in the commit folder, the swap is not done
            new_entries = {rel.split("/")[0] for rel in _read_manifest(commit).get("files", {})} | {MANIFEST}
            old.mkdir(exist_ok=True)
            for name in ENTRIES:  # idempotent: an entry already moved in is skipped
                new, cur = commit / name, out / name
                if name in new_entries and not new.exists():
                    continue
                if cur.exists():  # the old run's entry (or one the new run does not have): out of the way
                    os.replace(cur, old / name) if not (old / name).exists() else _remove(cur)
                if name in new_entries:
                    os.replace(new, cur)
        shutil.rmtree(commit, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(out / STAGING, ignore_errors=True)
    for legacy in (".reuser.old", ".student.old"):  # atomic_dir leftovers of an earlier hf_mrl
        if (out / legacy).exists() and not (out / legacy.strip(".").removesuffix(".old")).exists():
            os.replace(out / legacy, out / legacy.strip(".").removesuffix(".old"))
        shutil.rmtree(out / legacy, ignore_errors=True)


def _remove(path: Path) -> None:
    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


@contextlib.contextmanager
def staged_run(out: str | os.PathLike, needed_bytes: int = 0) -> Iterator[Path]:
    """Yield an empty staging folder to write the new run's entries into; then verify it and swap it in whole.

    `needed_bytes`: an estimate of the new run's size, checked against the free space before anything is written.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    recover(out)
    free = shutil.disk_usage(out).free
    if needed_bytes and free < needed_bytes + SLACK:
        raise disk_full_error(out, "the run's outputs", needed_bytes + SLACK)
    staging = out / STAGING
    staging.mkdir()
    try:
        yield staging
        manifest = write_manifest(staging)
        _check_against(staging, manifest)  # what is on disk is what was written
        with open(staging / MANIFEST, "rb") as f:
            os.fsync(f.fileno())
        os.replace(staging, out / COMMIT)  # the commit point
    except BaseException as err:
        shutil.rmtree(staging, ignore_errors=True)  # nothing half-written keeps the disk full
        if isinstance(err, Exception) and is_disk_full(err):
            raise disk_full_error(out, "the run's outputs", needed_bytes + SLACK or None) from err
        raise
    recover(out)


def verify_run(out: str | os.PathLike) -> dict:
    """Check that `out` holds one complete, consistent run (finishing an interrupted swap first); its manifest.

    Raises `IncompleteRunError` with a one-line reason. A folder saved by an hf_mrl without manifests is accepted
    with a warning when its metrics.json (written last there) exists.
    """
    out = Path(out)
    if not out.is_dir():
        raise IncompleteRunError(f"{out} is not a folder: pass the --output_dir of a finished run.")
    recover(out)
    if not (out / MANIFEST).is_file():
        if (out / "metrics.json").is_file() and (out / "student").is_dir():
            logger.warning("%s has no manifest (saved by an earlier hf_mrl): its files cannot be verified.", out)
            return {}
        raise IncompleteRunError(
            f"{out} does not hold a complete run (no {MANIFEST}): the run did not finish saving; run it again."
        )
    manifest = _read_manifest(out)
    _check_against(out, manifest)
    return manifest
