"""A pool of frozen teachers, used only through their class probabilities on target inputs."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from hf_mrl.pool.cache import LogitCache, row_keys
from hf_mrl.pool.endpoint import CallBudget, EndpointOptions, EndpointTeacher, is_endpoint
from hf_mrl.pool.ids import (  # noqa: F401
    _PICKLE_WEIGHTS,
    _WEIGHTS,
    TeacherLoadError,
    _check_no_duplicates,
    _identity,
    _is_local,
    _looks_like_hub_id,
    parse_pool_file,
    parse_teacher_id,
)
from hf_mrl.pool.labels import LabelMapping, close_matches, label_keys, load_label_map, map_labels, normalize_label
from hf_mrl.pool.loading import (  # noqa: F401
    _HUB_PATTERNS,
    _OTHER_FORMATS,
    PRECISIONS,
    _check_finite,
    _check_safetensors,
    _checked_checkpoint,
    _detect_library,
    _files_hash,
    _FromUint8,
    _load_timm,
    _load_transformers,
    _PerImage,
    _Processor,
    _remote_pickle_weights,
    _resolve,
    _timm_descriptions,
    _timm_preprocess,
    _weight_files,
    autocast_dtype,
    timm_transform,
)
from hf_mrl.pool.teacher import (  # noqa: F401
    Teacher,
)

__all__ = ["ModelPool", "Teacher", "TeacherLoadError", "parse_pool_file", "parse_teacher_id"]


logger = logging.getLogger(__name__)


def _map_pool(
    teachers: Sequence[Teacher], sources: Sequence, label_names: list[str], label_map: dict | None
) -> list[LabelMapping]:
    """Map every teacher's labels onto the target's, with the label map's shared and per-teacher entries."""
    shared = {k: v for k, v in (label_map or {}).items() if not isinstance(v, dict)}
    own: dict[int, dict[str, list[str]]] = {}
    for key, entries in (label_map or {}).items():
        if not isinstance(entries, dict):
            continue
        hits = [k for k, (t, src) in enumerate(zip(teachers, sources, strict=True)) if _names_teacher(key, t, src)]
        if not hits:
            ids = [t.id for t in teachers]
            close = close_matches(key, ids + [t.name for t in teachers])
            raise ValueError(
                f"The label map has entries for teacher {key!r}, which is not in the pool"
                + (f"; close matches: {close}" if close else "")
                + f". The pool's teachers are {ids}: key a teacher's entries by its id as in the pool file."
            )
        for k in hits:
            own[k] = {**own.get(k, {}), **entries}
    known = set().union(*(label_keys(t.label_names, t.label_descriptions) for t in teachers)) if shared else set()
    # an endpoint's labels are only known from its answers: a shared name may be one of them
    endpoint = any(isinstance(t, EndpointTeacher) for t in teachers)
    for target, names in {} if endpoint else shared.items():  # a shared name must mean something to some teacher
        for name in names:
            if normalize_label(name) not in known:
                vocabulary = [n for t in teachers for n in [*t.label_names, *(t.label_descriptions or [])] if n]
                close = close_matches(name, vocabulary)
                raise ValueError(
                    f"The label map names {name!r} for target class {target!r}, but no teacher in the pool has such "
                    "a label" + (f"; close matches: {close}" if close else "") + ". Write teacher labels as the "
                    "teachers name them (their id2label / timm label names or descriptions)."
                )
    mappings = []
    for k, t in enumerate(teachers):
        if isinstance(t, EndpointTeacher):  # its outputs are already over the target classes (it maps each answer)
            mappings.append(LabelMapping(list(range(len(label_names))), list(label_names), label_names))
            continue
        mine = own.get(k, {})
        overridden = {normalize_label(target) for target in mine}
        mappings.append(
            map_labels(
                t.label_names,
                label_names,
                teacher_name=f"Teacher {t.id!r}",
                descriptions=t.label_descriptions,
                label_map=mine,
                shared_label_map={g: v for g, v in shared.items() if normalize_label(g) not in overridden},
            )
        )
    return mappings


def _names_teacher(key: str, teacher: Teacher, source) -> bool:
    """Whether a label-map key names this teacher: its id as given in the pool, its name, `name@commit`, its path."""
    if key in {teacher.id, teacher.name} or (isinstance(source, str) and key == source):
        return True
    return _is_local(key) and _is_local(teacher.name) and os.path.realpath(key) == os.path.realpath(teacher.name)


def _describe_mapping(mapping: LabelMapping, limit: int = 20) -> str:
    items = list(mapping.to_dict().items())
    text = "; ".join(f"{target} <- {names if names else 'none'}" for target, names in items[:limit])
    return text + (f"; ... ({len(items) - limit} more)" if len(items) > limit else "")


def _warn_uncovered(teachers: Sequence[Teacher], mappings: Sequence[LabelMapping], label_names: list[str]) -> None:
    """Teachers with partial label spaces are fine; a target class that no teacher has deserves a warning."""
    for t, m in zip(teachers, mappings, strict=True):
        if m.num_covered < len(label_names):
            missing = [n for n, c in zip(label_names, m.coverage, strict=True) if not c]
            logger.info("Teacher %s lacks %d target class(es): %s", t.id, len(missing), missing[:10])
    uncovered = [n for c, n in enumerate(label_names) if not any(m.coverage[c] for m in mappings)]
    if uncovered:
        logger.warning(
            "No teacher in the pool predicts target class(es) %s: the reuser gives them probability 0, so the "
            "student learns them from their labeled samples only. Add a teacher that knows them for better results.",
            uncovered[:20],
        )


class _GroupTransforms:
    """Decoded originals -> {preprocessing key: the batch as those teachers take it} (runs in DataLoader workers)."""

    def __init__(self, transforms: dict):
        self.transforms = transforms

    def __call__(self, images: list) -> dict[str, torch.Tensor]:
        return {key: fn(images) for key, fn in self.transforms.items()}


def _gather_rows(local: torch.Tensor, need: np.ndarray, missing: np.ndarray, accelerator) -> torch.Tensor:
    """Every process computed teacher k on `need[rank::world]` where `missing`: all of it, in the order of `need`."""
    from accelerate.utils import gather

    world = accelerator.num_processes
    shares = [need[r::world][missing[need[r::world]]] for r in range(world)]
    per = max(len(x) for x in shares)
    padded = torch.zeros(per, local.shape[1])
    padded[: len(local)] = local
    everyone = gather(padded.to(accelerator.device)).cpu().view(world, per, -1)
    order = np.concatenate(shares)
    values = torch.cat([everyone[r, : len(x)] for r, x in enumerate(shares)])
    return values[torch.from_numpy(np.argsort(order, kind="stable"))]


class ModelPool:
    """K frozen teachers whose probabilities over the target classes are computed once and cached.

    Args:
        teachers: `Teacher` objects, Hub ids (`org/name[@revision]`) or local folders.
        label_names: the target task's class names; each teacher's labels are mapped onto them.
        cache_dir: where teacher logits persist across runs, seeds and processes, memory-mapped (keyed by teacher
            commit, weights hash and precision, and by a content hash of each input sample); in memory only when None.
        batch_size: teacher inference batch size.
        precision: teacher inference precision, "fp32", "bf16" or "fp16" (autocast on the teachers' device);
            part of the cache key, so logits of different precisions never mix.
        label_map: how teacher labels map onto the target's where names do not say it: a JSON file or a dict
            `{target label: [teacher labels]}` for every teacher, and/or `{teacher id: {target label: [teacher
            labels]}}` for one (the id as in the pool, its name, or `name@commit`). Several teacher labels for one
            target class add up their probabilities; an empty list says a teacher has none of that class. Teacher
            labels may be written as a label, a timm description or one of their comma-separated synonyms. Classes
            the map does not name are matched by name. `pool.label_mapping` gives the mapping used.

    >>> pool = ModelPool.from_file("hub-ids.txt", label_names=[str(d) for d in range(10)])  # doctest: +SKIP
    >>> H = pool.probs(images)  # (N, K, C), each row a distribution  # doctest: +SKIP
    """

    def __init__(
        self,
        teachers: Sequence[Teacher | str],
        label_names: Sequence[str],
        *,
        cache_dir: str | os.PathLike | None = None,
        batch_size: int = 256,
        precision: str = "fp32",
        label_map: str | os.PathLike | Mapping | None = None,
        endpoint: EndpointOptions | None = None,
        **load_kwargs,
    ):
        autocast_dtype(precision)  # raises ValueError for an unknown precision
        if isinstance(teachers, (str, os.PathLike)) or not len(teachers):
            raise ValueError(
                "A ModelPool needs a non-empty list of teachers (use ModelPool.from_file for a pool file)."
            )
        self.label_names = [str(n) for n in label_names]
        # The map as given, as plain data: saved with a reuser, it rebuilds the same pool. Read (and checked)
        # before any teacher loads, so a broken file fails at once.
        self.label_map = load_label_map(label_map)
        _check_no_duplicates([t.id if isinstance(t, Teacher) else str(t).strip() for t in teachers])
        self.endpoint_options = endpoint or EndpointOptions()
        self.budget = CallBudget(self.endpoint_options.max_calls)  # shared by the endpoint teachers

        def load(t):
            if isinstance(t, (Teacher, EndpointTeacher)):
                return t
            if is_endpoint(t):
                return EndpointTeacher(
                    t,
                    self.label_names,
                    label_map=self.label_map,
                    cache_dir=cache_dir,
                    options=self.endpoint_options,
                    budget=self.budget,
                    token=load_kwargs.get("token"),
                )
            return Teacher.load(t, **load_kwargs)

        self.teachers = [load(t) for t in teachers]
        _check_no_duplicates([t.id for t in self.teachers])
        sources = [t if isinstance(t, Teacher) else str(t).strip() for t in teachers]
        self.mappings: list[LabelMapping] = _map_pool(self.teachers, sources, self.label_names, self.label_map)
        for t, m in zip(self.teachers, self.mappings, strict=True):
            logger.info("Teacher %s label mapping (target <- teacher): %s", t.id, _describe_mapping(m))
        _warn_uncovered(self.teachers, self.mappings, self.label_names)
        self.cache = LogitCache(cache_dir)
        # Recorded in the reuser's config and cards; an encoder embedding is loaded under the same options.
        self.trust_remote_code = bool(load_kwargs.get("trust_remote_code", False))
        self.allow_pickle = bool(load_kwargs.get("allow_pickle", False))
        self.batch_size = batch_size
        self.precision = precision

    @classmethod
    def from_file(cls, path: str | os.PathLike, label_names: Sequence[str], **kwargs) -> ModelPool:
        return cls(parse_pool_file(path), label_names, **kwargs)

    def __len__(self) -> int:
        return len(self.teachers)

    @property
    def ids(self) -> list[str]:
        return [t.id for t in self.teachers]

    @property
    def label_mapping(self) -> dict[str, dict[str, list[str]]]:
        """The label mapping used, as plain data for metrics.json and cards: `{teacher id: {target label: [teacher
        labels]}}`, every target class listed (`[]`: the teacher lacks it). Passed back as `label_map`, it rebuilds
        the same mapping."""
        return {t.id: m.to_dict() for t, m in zip(self.teachers, self.mappings, strict=True)}

    @property
    def coverage(self) -> torch.Tensor:
        """(K, C) bool: which target classes each teacher can predict."""
        return torch.tensor([m.coverage for m in self.mappings])

    def to(self, device) -> ModelPool:
        for t in self.teachers:
            if not isinstance(t, EndpointTeacher):
                t.model.to(device)
        return self

    @property
    def endpoints(self) -> list[EndpointTeacher]:
        return [t for t in self.teachers if isinstance(t, EndpointTeacher)]

    def endpoint_stats(self) -> dict | None:
        """Calls made, answered, served from the cache and failed, and the answers' observed mass per endpoint
        teacher (metrics.json, the card); None for a pool without endpoint teachers."""
        if not self.endpoints:
            return None
        teachers = {
            t.id: {
                "top_k": t.options.top_k,
                "observed_mass": float(np.mean(t.observed_mass)) if t.observed_mass else None,
            }
            for t in self.endpoints
        }
        return {**self.budget.to_dict(), "teachers": teachers}

    def _endpoint_probs(self, k: int, images, keys, progress: bool, accelerator) -> torch.Tensor:
        """Endpoint teacher k on every image (one process calls, the others receive its answers)."""
        from hf_mrl.data.images import ImageSet

        teacher = self.teachers[k]
        world = accelerator.num_processes if accelerator is not None else 1
        out = torch.zeros(len(images), len(self.label_names))
        if world == 1 or accelerator.is_main_process:
            step = 1024  # originals are read a chunk at a time
            for start in range(0, len(images), step):
                pos = np.arange(start, min(start + step, len(images)))
                items = images._items(pos) if isinstance(images, ImageSet) else [images[int(i)] for i in pos]
                out[start : start + len(pos)] = teacher.probs(keys[pos], items, progress)[0]
        if world > 1:
            from accelerate.utils import broadcast

            out = broadcast(out.to(accelerator.device), from_process=0).cpu()
        return out

    def probs(self, images, progress: bool = False, accelerator=None, num_workers: int = 0) -> torch.Tensor:
        """Teacher probabilities over the target classes for uint8 images (N, 3, H, W) or an `ImageSet` -> (N, K, C).

        Each teacher runs at most once per distinct input sample: its logits are cached per sample (in memory and,
        with `cache_dir`, on disk), so another run, seed, subset or order of the same samples runs no teacher.

        An `ImageSet` (a lazy dataset split) is read once per batch by a DataLoader with `num_workers` processes:
        each image is decoded at its own size and goes through each teacher's own processor (teachers with the same
        preprocessing share it); its cache key is its original bytes, so the student's input size does not matter.

        Args:
            images: uint8 (N, 3, H, W), or an `hf_mrl.data.images.ImageSet`.
            progress: show a progress bar per teacher.
            accelerator: an `accelerate.Accelerator` (or `PartialState`) to shard the work: with several processes,
                each runs the teachers on 1/world of the samples no cache holds, and every process gets all the
                results. Every process must then call `probs` with the same images (it is a collective call).
            num_workers: DataLoader processes decoding an `ImageSet`.
        """
        from hf_mrl.data.images import ImageSet

        if isinstance(images, ImageSet):
            return self._probs_of_originals(images, progress, accelerator, num_workers)
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise TypeError(f"Expected uint8 images of shape (N, 3, H, W); got {images.dtype} {tuple(images.shape)}.")
        keys = row_keys(images)
        out = torch.empty(len(images), len(self), len(self.label_names))  # (N, K, C)
        for k in range(len(self)):
            if isinstance(self.teachers[k], EndpointTeacher):
                out[:, k] = self._endpoint_probs(k, images, keys, progress, accelerator)
            else:
                out[:, k] = self._teacher_probs(k, images, keys, progress, accelerator)
        return out

    def _probs_of_originals(self, images, progress: bool, accelerator, num_workers: int) -> torch.Tensor:
        """`probs` of an `ImageSet`: one decoding pass over the rows some teacher's cache lacks, shared by teachers."""
        keys = images.keys(num_workers)
        world = accelerator.num_processes if accelerator is not None else 1
        rank = accelerator.process_index if accelerator is not None else 0
        logits, missing = [], []
        for teacher in self.teachers:
            if isinstance(teacher, EndpointTeacher):  # answered below, not run here
                logits.append(None)
                missing.append(np.zeros(len(images), dtype=bool))
                continue
            found, hit = self.cache.lookup(self._cache_key(teacher), keys, len(teacher.label_names))
            if world > 1:  # every process must agree on the rows to compute
                from accelerate.utils import reduce

                miss = torch.from_numpy((~hit).astype("uint8")).to(accelerator.device)
                hit = reduce(miss, reduction="sum").cpu().numpy() == 0
            logits.append(found if found is not None else torch.zeros(len(images), len(teacher.label_names)))
            missing.append(~hit)
        need = np.flatnonzero(np.any(missing, axis=0)) if len(images) else np.zeros(0, np.int64)
        if len(need):
            mine = need[rank::world]
            wanted = [m[mine] for m in missing]
            with contextlib.ExitStack() as stack:  # rows reach the cache as they are computed, even if killed
                writers = [
                    stack.enter_context(self.cache.writer(self._cache_key(t), keys[mine[w]], teacher=t.id))
                    if w.any()
                    else None
                    for t, w in zip(self.teachers, wanted, strict=True)
                ]
                local = self._run_originals(images, mine, wanted, progress, num_workers, writers)
            for k, teacher in enumerate(self.teachers):
                rows = need[missing[k][need]]  # this teacher's new rows, in order
                if not len(rows):
                    continue
                new = local[k] if world == 1 else _gather_rows(local[k], need, missing[k], accelerator)
                logits[k][torch.from_numpy(rows)] = new
                if world > 1:
                    self._write_others(teacher, keys[rows], new, accelerator)
            if world > 1:
                accelerator.wait_for_everyone()  # the entries are on disk before anyone looks again
        out = torch.empty(len(images), len(self), len(self.label_names))
        for k, mapping in enumerate(self.mappings):
            if isinstance(self.teachers[k], EndpointTeacher):
                out[:, k] = self._endpoint_probs(k, images, keys, progress, accelerator)
            else:
                out[:, k] = mapping.probs(logits[k])
        return out

    def _run_originals(self, images, rows, wanted, progress: bool, num_workers: int, writers) -> list[torch.Tensor]:
        """Every teacher on the originals at `rows` whose `wanted[k]` mask is set: logits per teacher, in row order,
        each batch also going to `writers[k]`."""
        groups: dict[str, list[int]] = {}
        for k, teacher in enumerate(self.teachers):
            if wanted[k].any():
                groups.setdefault(teacher.transform_key, []).append(k)
        transforms = _GroupTransforms({key: self.teachers[ks[0]].transform for key, ks in groups.items()})
        parts: list[list[torch.Tensor]] = [[torch.empty(0, len(t.label_names))] for t in self.teachers]
        done = 0
        batches = images.batches(
            transforms, rows, batch_size=self.batch_size, num_workers=num_workers, progress=progress, desc="teachers"
        )
        for chunk, inputs in batches:
            for key, ks in groups.items():
                for k in ks:
                    mask = torch.from_numpy(wanted[k][done : done + len(chunk)])
                    if mask.any():
                        x = inputs[key] if bool(mask.all()) else inputs[key][mask]
                        part = self.teachers[k].logits_of_inputs(x, self.precision)
                        writers[k].write(part)
                        parts[k].append(part)
            done += len(chunk)
        return [torch.cat(p) for p in parts]

    def _cache_key(self, teacher: Teacher) -> str:
        return teacher.cache_key if self.precision == "fp32" else f"{teacher.cache_key}-{self.precision}"

    def _teacher_probs(self, k: int, images: torch.Tensor, keys, progress: bool, accelerator=None) -> torch.Tensor:
        teacher, mapping = self.teachers[k], self.mappings[k]
        width = len(teacher.label_names)
        logits, hit = self.cache.lookup(self._cache_key(teacher), keys, width)
        world = accelerator.num_processes if accelerator is not None else 1
        if world > 1:  # every process must agree on the rows to compute
            from accelerate.utils import reduce

            miss = torch.from_numpy((~hit).astype("uint8")).to(accelerator.device)
            hit = reduce(miss, reduction="sum").cpu().numpy() == 0
        missing = (~hit).nonzero()[0]
        if len(missing):
            if world > 1:
                new = self._compute_sharded(k, images, keys, missing, progress, accelerator)
            else:
                new = self._compute(k, images, keys, missing, progress)
            if logits is None:
                logits = torch.zeros(len(images), width)
            logits[torch.from_numpy(missing)] = new
        return mapping.probs(logits)

    def _run(self, k: int, images: torch.Tensor, rows, progress: bool, write=None) -> torch.Tensor:
        """Teacher k on images[rows] in batches -> logits (len(rows), C_teacher); each batch also goes to `write`."""
        from tqdm.auto import tqdm

        teacher = self.teachers[k]
        chunks = range(0, len(rows), self.batch_size)
        parts = [torch.empty(0, len(teacher.label_names))]
        for i in tqdm(chunks, desc=f"teacher {k + 1}/{len(self)}", disable=not progress, leave=False):
            part = teacher.logits(images[torch.from_numpy(rows[i : i + self.batch_size])], self.precision)
            if write is not None:
                write(part)
            parts.append(part)
        return torch.cat(parts)

    def _compute(self, k: int, images: torch.Tensor, keys, missing, progress: bool) -> torch.Tensor:
        teacher = self.teachers[k]
        with self.cache.writer(self._cache_key(teacher), keys[missing], teacher=teacher.id) as writer:
            return self._run(k, images, missing, progress, writer.write)

    def _compute_sharded(self, k: int, images: torch.Tensor, keys, missing, progress: bool, accelerator):
        """Each process runs 1/world of `missing`; all get every row; one process per machine writes the cache."""
        from accelerate.utils import gather

        rank, world = accelerator.process_index, accelerator.num_processes
        teacher = self.teachers[k]
        width, per = len(teacher.label_names), -(-len(missing) // world)
        mine = missing[rank::world]
        with self.cache.writer(self._cache_key(teacher), keys[mine], teacher=teacher.id) as writer:
            local = self._run(k, images, mine, progress and accelerator.is_local_main_process, writer.write)
        padded = torch.zeros(per, width)
        padded[: len(local)] = local
        everyone = gather(padded.to(accelerator.device)).cpu().view(world, per, width)
        new = torch.empty(len(missing), width)
        for r in range(world):
            new[r::world] = everyone[r, : len(range(r, len(missing), world))]
        self._write_others(teacher, keys[missing], new, accelerator)
        accelerator.wait_for_everyone()  # the entry is on disk before anyone looks again
        return new

    def _write_others(self, teacher: Teacher, keys, values: torch.Tensor, accelerator) -> None:
        """After a gather: the rows other processes computed, into this machine's cache (once per machine)."""
        if not (accelerator.is_local_main_process or self.cache.cache_dir is None):
            return
        _, hit = self.cache.contains(self._cache_key(teacher), keys, values.shape[1])
        if (~hit).any():
            with self.cache.writer(self._cache_key(teacher), keys[~hit], teacher=teacher.id) as writer:
                writer.write(values[torch.from_numpy(~hit)])
