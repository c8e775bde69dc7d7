"""Push a run's reuser and student to the Hub: two repositories, one commit each.

Layout (see README, "Hub"): `ORG/NAME` holds the attention reuser, `ORG/NAME-student` the student. Two repos, because
`timm.create_model("hf-hub:ORG/NAME-student")` needs the student's config.json at the root of a repo, and because each
model gets its own card, metadata and model-index on the Hub.

A run of a method without a reuser pushes its student only, to the same `ORG/NAME-student`. A push never touches the
local output. If it fails, push the same folders again with

    hf-mrl push OUTPUT_DIR ORG/NAME [--private]
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from hf_mrl.utils import read_json

__all__ = ["PushError", "PushResult", "check_hub_model_id", "push_folder", "push_run", "student_repo_id"]

logger = logging.getLogger(__name__)

STUDENT_SUFFIX = "-student"
_REQUIRED = ("config.json", "model.safetensors", "README.md")


class PushError(RuntimeError):
    """A push failed; the message says what failed and the command that retries it."""


@dataclass
class PushResult:
    """Where a run went; the reuser fields are None for a run without a reuser."""

    reuser_repo_id: str | None
    student_repo_id: str
    reuser_commit_url: str | None
    student_commit_url: str


def check_hub_model_id(hub_model_id: str) -> str:
    """Validate `ORG/NAME` (both parts, since the student repo and the cards' snippets need the full id)."""
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(hub_model_id)
        validate_repo_id(student_repo_id(hub_model_id))
    except ValueError as err:
        raise ValueError(f"--hub_model_id {hub_model_id!r} is not a valid Hub repo id: {err}") from None
    if "/" not in hub_model_id:
        raise ValueError(f"--hub_model_id {hub_model_id!r} needs a namespace: use ORG/NAME (or USER/NAME).")
    return hub_model_id


def student_repo_id(hub_model_id: str) -> str:
    """The student's repo for a run pushed to `hub_model_id`: `ORG/NAME-student`."""
    return hub_model_id + STUDENT_SUFFIX


def _retry_command(output_dir: Path, hub_model_id: str, private: bool | None) -> str:
    flags = " --private" if private else ""
    return f"hf-mrl push {output_dir} {hub_model_id}{flags}"


def _check_folder(folder: Path) -> None:
    missing = [name for name in _REQUIRED if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} is not a complete model folder: missing {missing}.")


def _check_card(folder: Path) -> None:
    """The folder is complete and its README.md passes our metadata checks and the Hub's YAML validation."""
    from hf_mrl.hub.cards import validate_card

    _check_folder(folder)
    card = validate_card((folder / "README.md").read_text(encoding="utf-8"))
    card.validate()  # the Hub's own check of the YAML header (POST /api/validate-yaml)


def push_folder(
    folder: str | Path,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str = "Upload with hf_mrl",
    validate: bool = True,
):
    """Create `repo_id` if needed and make its main branch hold exactly `folder`'s files, in one commit.

    Files of an earlier push that the folder no longer has are deleted in that same commit. With `validate`, the
    folder's README.md is checked first, locally and by the Hub's metadata validation.
    Returns the `huggingface_hub.CommitInfo`.
    """
    from huggingface_hub import HfApi

    folder = Path(folder)
    _check_folder(folder)
    if validate:
        _check_card(folder)
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    return api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message, delete_patterns="*")


def push_run(
    output_dir: str | Path,
    hub_model_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
) -> PushResult:
    """Push `output_dir/reuser` (when the run has one) to `hub_model_id` and `output_dir/student` to
    `hub_model_id-student`.

    Refuses a folder that does not hold one complete run (`hf_mrl.training.run_folder.verify_run`). Raises `PushError`
    (the local output stays as it is) with the command that retries the push.
    """
    from hf_mrl.training.run_folder import IncompleteRunError, verify_run

    output_dir = Path(output_dir)
    check_hub_model_id(hub_model_id)
    try:
        verify_run(output_dir)  # never publish a reuser of one run beside a student of another
    except IncompleteRunError as err:
        raise PushError(f"nothing was pushed: {err}") from None
    retry = _retry_command(output_dir, hub_model_id, private)
    targets = [("student", student_repo_id(hub_model_id))]
    if (output_dir / "reuser").is_dir():
        targets.insert(0, ("reuser", hub_model_id))
    hint = (
        f"The local output in {output_dir} is intact. Retry the push with:\n    {retry}\n"
        "(log in first with `hf auth login` or set HF_TOKEN if the Hub refused the credentials)."
    )
    for part, _ in targets:  # check both before pushing either: no half-pushed run for a bad card
        try:
            _check_card(output_dir / part)
        except Exception as err:  # any failure (network included) must end in the retry hint
            raise PushError(f"nothing was pushed: checking {output_dir / part} failed: {err}\n{hint}") from err
    urls = {}
    for part, repo_id in targets:
        try:
            info = push_folder(
                output_dir / part,
                repo_id,
                token=token,
                private=private,
                commit_message=f"Upload {'MRL' if part == 'reuser' else _method(output_dir)} {part} (hf_mrl)",
                validate=False,
            )
        except Exception as err:
            done = f" ({targets[0][0]} was pushed to {targets[0][1]})" if urls else ""
            raise PushError(f"pushing the {part} to {repo_id} failed{done}: {err}\n{hint}") from err
        urls[part] = info.commit_url
        logger.info("Pushed the %s to %s: %s", part, repo_id, info.commit_url)
    has_reuser = "reuser" in urls
    return PushResult(
        hub_model_id if has_reuser else None, student_repo_id(hub_model_id), urls.get("reuser"), urls["student"]
    )


def _method(output_dir: Path) -> str:
    """The method named in the run's metrics.json (for commit messages)."""

    try:
        method = read_json(output_dir / "metrics.json").get("method", "mrl")
    except (OSError, ValueError):
        return "MRL"
    return "MRL" if method == "mrl" else method
