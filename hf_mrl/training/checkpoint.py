"""Training checkpoints that hold no pickle: tensors in safetensors, everything else in JSON.

Accelerate's `save_state` writes the optimiser, the RNG states and every registered object with `torch.save`, and
`load_state` unpickles them (`weights_only=False` for registered objects): a file planted in a run folder would run
its code on `--resume_from_checkpoint`. A checkpoint here is a folder of

- `state.safetensors` + `state.json`: the student, its optimiser and every object registered with
  `StudentTrainer.register_for_checkpointing`, as nested state dicts whose tensors live in the safetensors file and
  whose structure (dicts with int or str keys, lists, numbers, strings, None) is JSON;
- `rng_<process>.safetensors` + `rng_<process>.json`: each process's torch / numpy / Python RNG states.

Loading reads nothing but safetensors and bounded-depth JSON, and never unpickles. A checkpoint folder holding any
pickle file (`.pkl`, `.bin`, `.pt`, `.pth`...: an Accelerate checkpoint of an earlier hf_mrl, or a planted file) is
refused all the same, since it was not written by this format: someone or something else wrote into the run folder.
With `allow_pickle` such files are reported and ignored (still never loaded).
"""

from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from hf_mrl.utils import check_json_depth, disk_full_error, is_disk_full

__all__ = ["PICKLE_SUFFIXES", "CheckpointError", "load_checkpoint", "pickle_files", "save_checkpoint"]

logger = logging.getLogger(__name__)

FORMAT = "hf_mrl-checkpoint/1"
PICKLE_SUFFIXES = (".pkl", ".pickle", ".bin", ".pt", ".pth", ".ckpt")
MAX_DEPTH = 64


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed safely or at all; the message says why and what to do."""


def pickle_files(folder: str | os.PathLike) -> list[Path]:
    """Files in `folder` (recursively) that a loader would unpickle."""
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES)


# -- nested state <-> (JSON structure, tensors) -------------------------------------------------------------
def _flatten(obj, tensors: dict[str, torch.Tensor]):
    if isinstance(obj, torch.Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = obj.detach().cpu().contiguous()
        return {"__tensor__": name}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": _flatten(torch.from_numpy(np.ascontiguousarray(obj)), tensors)["__tensor__"]}
    if isinstance(obj, dict):
        return {"__dict__": [[k, _flatten(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_flatten(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_flatten(v, tensors) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot checkpoint a {type(obj).__name__} without pickle")


def _unflatten(obj, tensors: dict[str, torch.Tensor]):
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__ndarray__" in obj:
            return tensors[obj["__ndarray__"]].numpy()
        if "__tuple__" in obj:
            return tuple(_unflatten(v, tensors) for v in obj["__tuple__"])
        if "__dict__" in obj:
            out = {}
            for k, v in obj["__dict__"]:
                if not isinstance(k, (int, str)):
                    raise CheckpointError(f"a state key of type {type(k).__name__}")
                out[k] = _unflatten(v, tensors)
            return out
    return obj


def _write(folder: Path, stem: str, state, meta: dict) -> None:
    tensors: dict[str, torch.Tensor] = {}
    structure = _flatten(state, tensors)
    save_file(tensors, str(folder / f"{stem}.safetensors"), metadata={"format": FORMAT})
    (folder / f"{stem}.json").write_text(json.dumps({"format": FORMAT, **meta, "state": structure}))


def _read(folder: Path, stem: str):
    path = folder / f"{stem}.json"
    try:
        text = path.read_text(encoding="utf-8")
        check_json_depth(text, MAX_DEPTH, what=str(path))
        doc = json.loads(text)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise CheckpointError(f"{path} is not an hf_mrl checkpoint (format {doc.get('format')!r})")
        tensors = load_file(str(folder / f"{stem}.safetensors"))
        return doc, _unflatten(doc["state"], tensors)
    except CheckpointError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"checkpoint {folder} is unreadable ({type(err).__name__}: {err})") from None


# -- RNG states -----------------------------------------------------------------------------------------------
def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- the checkpoint ------------------------------------------------------------------------------------------
def save_checkpoint(folder: str | os.PathLike, objects: dict, accelerator, step: int) -> None:
    """Write `objects` (name -> object with `state_dict`) and the RNG states into `folder` (which must exist).

    The main process writes the shared state, every process its RNG state. A full disk raises `DiskFullError`
    naming the folder.
    """
    folder = Path(folder)
    try:
        if accelerator.is_main_process:
            states = {name: obj.state_dict() for name, obj in objects.items()}
            _write(folder, "state", states, {"step": int(step), "objects": sorted(objects)})
        _write(folder, f"rng_{accelerator.process_index}", _rng_state(), {})
    except Exception as err:
        if is_disk_full(err):
            raise disk_full_error(folder, "the training checkpoint") from err
        raise


def load_checkpoint(folder: str | os.PathLike, objects: dict, accelerator, allow_pickle: bool = False) -> int:
    """Restore `objects` and this process's RNG state from `folder`; returns the step it was saved at.

    Refuses a folder with pickle files unless `allow_pickle` (then they are ignored with a warning: never loaded).
    """
    folder = Path(folder)
    pickles = pickle_files(folder)
    if pickles and not allow_pickle:
        shown = ", ".join(p.name for p in pickles[:3]) + (" ..." if len(pickles) > 3 else "")
        raise CheckpointError(
            f"{folder} holds pickle files ({shown}), which could run code when loaded: resume refuses them. "
            "Start over without --resume_from_checkpoint, or pass --allow_pickle if you trust whoever wrote "
            "this folder."
        )
    if pickles:
        logger.warning("Ignoring pickle files in %s (never loaded): %s", folder, ", ".join(p.name for p in pickles))
    if not (folder / "state.json").is_file():
        hint = (
            " (an Accelerate checkpoint of an earlier hf_mrl, which this version does not unpickle)" if pickles else ""
        )
        raise CheckpointError(
            f"{folder} is not an hf_mrl checkpoint{hint}: start over without --resume_from_checkpoint."
        )
    doc, states = _read(folder, "state")
    if sorted(states) != sorted(objects):
        raise CheckpointError(
            f"checkpoint {folder} holds {sorted(states)}, this run has {sorted(objects)}: it comes from another "
            "configuration; start over without --resume_from_checkpoint."
        )
    for name, obj in objects.items():
        obj.load_state_dict(states[name])
    rng = folder / f"rng_{accelerator.process_index}.json"
    if rng.is_file():
        _set_rng_state(_read(folder, f"rng_{accelerator.process_index}")[1])
    return int(doc["step"])
