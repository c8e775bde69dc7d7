"""Teacher ids and pool files: `repo_id[@revision]`, local folders, `endpoint:URL`; duplicates refused."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from hf_mrl.paths import missing_folder_message
from hf_mrl.pool.endpoint import check_endpoint_line, is_endpoint

_WEIGHTS = "model.safetensors"


_PICKLE_WEIGHTS = ("pytorch_model.bin", "model.bin", "open_clip_pytorch_model.bin")


def parse_teacher_id(entry: str) -> tuple[str, str | None]:
    """Split `repo_id[@revision]` (or a local path) into its name and revision.

    >>> parse_teacher_id("org/name@v1.0")
    ('org/name', 'v1.0')
    """
    entry = entry.strip()
    if not entry:
        raise ValueError("Empty teacher id.")
    if _is_local(entry):
        return entry, None
    name, sep, revision = entry.rpartition("@")
    if not sep:
        return entry, None
    if not name or not revision:
        raise ValueError(f"Malformed teacher id {entry!r}: expected `repo_id@revision` with both parts non-empty.")
    return name, revision


def _is_local(path: str | os.PathLike) -> bool:
    """Whether `path` exists on this machine; False for names no file system accepts (too long, NUL bytes)."""
    try:
        return os.path.exists(path)
    except (OSError, ValueError):
        return False


def _looks_like_hub_id(name: str) -> bool:
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except ValueError:
        return False
    return True


def _identity(source: str) -> str:
    """What makes two teacher sources the same teacher: the real path of a local folder (`t`, `t/.` and `../x/t`
    are one), the id of a Hub teacher."""
    name, revision = parse_teacher_id(source) if not os.path.isdir(source) else (source, None)
    return os.path.realpath(name) if revision is None and os.path.isdir(name) else source


def _check_no_duplicates(sources: Sequence[str]) -> None:
    seen: dict[str, str] = {}
    for source in sources:
        try:
            key = _identity(source)
        except ValueError:  # a malformed id: Teacher.load says what is wrong with it
            key = source
        if key in seen:
            same = "" if seen[key] == source else f" (as {seen[key]!r})"
            raise ValueError(f"Duplicate teachers in the pool: {source!r} is listed twice{same}.")
        seen[key] = source


def parse_pool_file(path: str | os.PathLike) -> list[str]:
    """Read a pool file: one teacher a line (`repo_id[@revision]`, a local path, or `endpoint:URL` for a teacher
    behind an inference endpoint), `#` starts a comment.

    Relative local paths are resolved against the pool file's folder. Every problem is a `ValueError` (or
    `FileNotFoundError`) naming the file and line: no teacher, an entry with spaces, a malformed `@revision`, an
    entry that is neither an existing path nor a Hub id, the same teacher twice.

    >>> parse_pool_file("hub-ids.txt")  # doctest: +SKIP
    ['org/mnist-classifier@3f2a1c9', 'org/svhn-classifier', '/abs/path/my-local-teacher']
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"Pool file {str(path)!r} is a folder: pass a text file with one teacher id a line.")
    if not path.is_file():
        raise FileNotFoundError(f"Pool file {str(path)!r} does not exist.")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM (Windows editors write one) is not part of line 1
    except UnicodeDecodeError as err:
        raise ValueError(
            f"Pool file {str(path)!r} is not a UTF-8 text file ({err.reason} at byte {err.start}): "
            "write one `repo_id[@revision]` or path a line."
        ) from None
    entries: list[str] = []
    seen: dict[str, int] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{path}:{lineno}"
        if any(c.isspace() or not c.isprintable() for c in line):
            raise ValueError(f"{where}: malformed entry {raw.strip()!r}: one teacher id per line, no spaces.")
        if is_endpoint(line):
            check_endpoint_line(line, where)
            if line in seen:
                raise ValueError(f"{where}: duplicate teacher {line!r} (first on line {seen[line]}).")
            seen[line] = lineno
            entries.append(line)
            continue
        local = path.parent / line
        if not os.path.isabs(line) and _is_local(local):
            line = str(local.resolve())
        elif missing_folder_message(line.split("@", 1)[0], path.parent):  # a typo in a path, not a Hub id
            raise ValueError(f"{where}: {missing_folder_message(line.split('@', 1)[0], path.parent)}.")
        try:
            name, _ = parse_teacher_id(line)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        if not _is_local(name) and not _looks_like_hub_id(name):
            raise ValueError(
                f"{where}: {raw.strip()!r} is neither an existing folder nor a Hub id `org/name[@revision]` "
                f"(relative paths are read from {str(path.parent)!r})."
            )
        if line in seen:
            raise ValueError(f"{where}: duplicate teacher {line!r} (first on line {seen[line]}).")
        seen[line] = lineno
        entries.append(line)
    if not entries:
        raise ValueError(f"Pool file {str(path)!r} lists no teacher: add one `repo_id[@revision]` or path a line.")
    return entries


class TeacherLoadError(ValueError):
    """A teacher could not be loaded. `teacher` is the id as given; `reason` says why, one of `REASONS`."""

    REASONS = (
        "not_found",  # neither a local folder nor a Hub repository the user can see
        "revision_not_found",
        "gated",
        "offline",  # HF_HUB_OFFLINE=1 and not in the cache
        "unreachable",  # the Hub cannot be reached and not in the cache
        "hub_error",
        "unknown_format",  # not a transformers or timm checkpoint
        "no_classification_head",
        "no_labels",
        "no_weights",
        "unsafe_weights",  # pickle only
        "corrupted_weights",  # unreadable safetensors, or NaN / inf values in the weights
        "remote_code",  # needs its repository's own code, and trust_remote_code is off
        "load_failed",
    )

    def __init__(self, teacher: str, reason: str, message: str, what: str = "Teacher"):
        super().__init__(f"{what} {teacher!r} {message}")
        self.teacher, self.reason = teacher, reason
