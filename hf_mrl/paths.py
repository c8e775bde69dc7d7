"""Local paths that users mistype: say "no such folder" before a name is taken for a Hub id."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["missing_folder_message"]


def missing_folder_message(name: str, base: str | os.PathLike = ".") -> str | None:
    """`no such folder ...` when `name` (relative to `base`) is meant as a local path that does not exist: a path
    (`./x`, `../x`, `~/x`, absolute, more parts than `org/name`), or `a/b` whose folder `a` exists (a typo in its last
    part, otherwise taken for a Hub id and reported as missing from the Hub or its cache); else None."""
    import difflib

    name = str(name)
    path = Path(base) / os.path.expanduser(name)
    try:
        exists = os.path.exists(path)
    except (OSError, ValueError):  # names no file system accepts (too long, NUL bytes)
        exists = False
    if not name or exists:
        return None
    pathlike = name.startswith(("./", "../", "~", ".\\")) or os.path.isabs(name) or name.count("/") > 1
    if not (pathlike or ("/" in name.strip("/") and path.parent.is_dir())):
        return None
    message = f"no such folder {str(path)!r}"
    if path.parent.is_dir():
        close = difflib.get_close_matches(path.name, [p.name for p in path.parent.iterdir()], n=3, cutoff=0.6)
        if close:
            message += f"; did you mean {', '.join(repr(str(path.parent / c)) for c in close)}?"
    return message
