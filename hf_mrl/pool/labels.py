"""Map a teacher's own label names onto the target task's label names.

Automatic matching compares normalised names (case, spaces, `-`/`_` ignored): first a teacher label or description
as a whole, then each of its comma-separated synonyms (`tabby, tabby cat` matches a target class `tabby cat`); then,
for teachers with ImageNet classes, by meaning: a target class takes every ImageNet class below it in WordNet
(`cat` the domestic and wild cats below `cat, true cat`, `dog` the dog breeds); then by words (`cat` in `tiger cat`).
What names cannot tell, a label map says: target label -> the teacher labels that mean it (several teacher classes
may map onto one target class: their probabilities add up).
"""

from __future__ import annotations

import difflib
import functools
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence

import torch

from hf_mrl.utils import read_json

__all__ = [
    "LabelMapping",
    "close_matches",
    "closest_labels",
    "imagenet_wnids",
    "label_keys",
    "imagenet_descriptions",
    "is_generic",
    "label_synonyms",
    "load_label_map",
    "map_labels",
    "normalize_label",
    "wordnet_match",
]

logger = logging.getLogger(__name__)

_GENERIC = re.compile(r"^label_?\d+$")
_SYNSET = re.compile(r"^n\d{8}$")


def normalize_label(name: str) -> str:
    """Canonical form used to match label names across models (case, spaces, `-`/`_` ignored)."""
    return re.sub(r"[\s_\-]+", " ", str(name).strip().lower()).strip()


def label_synonyms(name: str) -> list[str]:
    """The comma-separated synonyms of a label, normalised: `"tabby, tabby cat"` -> `["tabby", "tabby cat"]`."""
    return [s for s in (normalize_label(part) for part in str(name).split(",")) if s]


def is_generic(names: list[str]) -> bool:
    """Whether label names are the placeholders transformers writes when none are given (`LABEL_0`, `LABEL_1`...)."""
    return bool(names) and all(_GENERIC.match(normalize_label(n).replace(" ", "_")) for n in names)


def imagenet_descriptions(label_names: Sequence[str]) -> list[str] | None:
    """timm's descriptions of ImageNet WordNet ids (`n02123045` -> `tabby, tabby cat`), or None for other labels."""
    if not label_names or not all(_SYNSET.match(str(n)) for n in label_names):
        return None
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset

        subset = infer_imagenet_subset({"num_classes": len(label_names)}) or "imagenet-22k"
        info = ImageNetInfo(subset)
        return [info.label_name_to_description(str(n)) for n in label_names]
    except Exception:  # an unknown synset or subset: the names alone are used
        return None


class LabelMapping:
    """Which teacher outputs make up each target class.

    `groups[c]` lists the teacher output indices of target class `c` (empty when the teacher lacks it): one for a
    name match, several where a label map joins teacher classes (their probabilities add up). `index[c]` is the first
    of them, or -1.
    """

    def __init__(self, groups: Sequence[Sequence[int] | int], teacher_labels: list[str], target_labels: list[str]):
        self.groups = [([g] if g >= 0 else []) if isinstance(g, int) else list(g) for g in groups]
        self.teacher_labels = teacher_labels
        self.target_labels = target_labels

    @property
    def index(self) -> list[int]:
        return [g[0] if g else -1 for g in self.groups]

    @property
    def coverage(self) -> list[bool]:
        return [bool(g) for g in self.groups]

    @property
    def num_covered(self) -> int:
        return sum(self.coverage)

    def to_dict(self) -> dict[str, list[str]]:
        """`{target label: [teacher labels]}` (`[]`: uncovered), plain data for logs, metrics and cards."""
        return {self.target_labels[c]: [self.teacher_labels[i] for i in g] for c, g in enumerate(self.groups)}

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Teacher logits (B, C_teacher) -> probabilities over the target classes (B, C).

        The softmax runs over the teacher outputs that some target class uses, so a teacher's extra classes take no
        mass; the outputs of one target class add up; uncovered target classes get probability 0.
        """
        owner = [c for c, g in enumerate(self.groups) for _ in g]
        cols = torch.tensor([i for g in self.groups for i in g], device=logits.device)
        sub = torch.softmax(logits.float()[:, cols], dim=-1)  # (B, M)
        out = logits.new_zeros(logits.shape[0], len(self.groups), dtype=torch.float32)
        return out.index_add_(1, torch.tensor(owner, device=logits.device), sub)  # (B, C)

    def __repr__(self) -> str:
        return f"LabelMapping(covered={self.num_covered}/{len(self.groups)})"


def close_matches(name: str, candidates: Sequence[str], n: int = 5) -> list[str]:
    """The candidates most like `name` (compared by normalised form and by synonym), for "did you mean" messages."""
    keys: dict[str, str] = {}
    for c in candidates:
        for key in [normalize_label(c), *label_synonyms(c)]:
            keys.setdefault(key, c)
    found = difflib.get_close_matches(normalize_label(name), list(keys), n=n, cutoff=0.6)
    return list(dict.fromkeys(keys[k] for k in found))


def _teacher_keys(teacher_labels: list[str], descriptions: Sequence[str | None] | None):
    """Per teacher output: the normalised whole names (label, description) and their synonyms."""
    whole, synonyms = [], []
    for i, name in enumerate(teacher_labels):
        names = [name] + ([descriptions[i]] if descriptions and descriptions[i] else [])
        whole.append({normalize_label(n) for n in names})
        synonyms.append({s for n in names for s in label_synonyms(n)})
    return whole, synonyms


def _shown(names: Sequence[str], limit: int = 8) -> list[str]:
    return list(names[:limit]) + (["..."] if len(names) > limit else [])


def map_labels(
    teacher_labels: list[str],
    target_labels: list[str],
    teacher_name: str = "teacher",
    *,
    descriptions: Sequence[str | None] | None = None,
    label_map: Mapping[str, Sequence[str]] | None = None,
    shared_label_map: Mapping[str, Sequence[str]] | None = None,
) -> LabelMapping:
    """Match label names; raise `ValueError` when there is no meaningful mapping.

    Each target class takes, in this order: the teacher labels `label_map` names for it (an empty list: none); else
    the teacher output whose label or description equals its name (after `normalize_label`); else the one with a
    comma-separated synonym equal to it. There is no mapping, and so an error, when the teacher shares no label with
    the target, or when both sides only have placeholder names (`LABEL_0`, ...): those would pair classes by output
    position, not by meaning. A teacher whose labels cover only part of the target is fine (its missing classes get
    probability 0).

    Args:
        teacher_labels: the teacher's label names in output order (its `id2label`, timm `label_names`).
        target_labels: the target task's label names in class-index order.
        teacher_name: used in messages.
        descriptions: per teacher output, a longer name (timm's label descriptions: `tabby, tabby cat` for
            `n02123045`), matched like the label.
        label_map: target label -> teacher label names (a label, a description or one of their synonyms) for this
            teacher: a name it lacks is an error; an empty list says it has none of that class.
        shared_label_map: the same for a map shared by several teachers: names this teacher lacks are skipped (the
            caller checks that some teacher has each), and a class none of whose names it has is matched by name.

    >>> map_labels(["cat", "dog", "0"], ["0", "Dog"]).index
    [2, 1]
    >>> map_labels(["tabby, tabby cat", "tiger cat", "beagle"], ["cat", "dog"], label_map={"cat": ["tabby", "tiger cat"]}).groups
    [[0, 1], []]
    """
    target_labels = [str(t) for t in target_labels]
    teacher_labels = [str(t) for t in teacher_labels]
    if not target_labels:
        raise ValueError("The target task has no label names; pass the class names of the target dataset.")
    norm_target = [normalize_label(t) for t in target_labels]
    if any(not t for t in norm_target):
        raise ValueError(f"Target label names must be non-empty; got {target_labels[:8]}.")
    if len(set(norm_target)) != len(norm_target):
        raise ValueError(f"Target label names are not unique after normalisation: {target_labels}.")
    if not teacher_labels:
        raise ValueError(
            f"{teacher_name} has no label names: give the checkpoint an `id2label` (or timm label_names)."
        )
    if descriptions is not None and len(descriptions) != len(teacher_labels):
        raise ValueError(
            f"{teacher_name} has {len(teacher_labels)} labels but {len(descriptions)} label descriptions."
        )
    if is_generic(teacher_labels) and is_generic(target_labels) and not (label_map or shared_label_map):
        raise ValueError(
            f"{teacher_name} and the target task both have placeholder label names ({teacher_labels[0]}, ...): "
            "matching them would pair classes by output position, not by meaning. Give the checkpoint real "
            "`id2label` names and the dataset real ClassLabel names."
        )
    whole, synonyms = _teacher_keys(teacher_labels, descriptions)
    groups: list[list[int] | None] = [None] * len(target_labels)
    owner: dict[int, int] = {}  # teacher output -> the target class that took it

    def take(c: int, outputs: list[int]) -> None:
        for i in outputs:
            if i in owner and owner[i] != c:
                raise ValueError(
                    f"{teacher_name}: output {teacher_labels[i]!r} is mapped onto two target classes, "
                    f"{target_labels[owner[i]]!r} and {target_labels[c]!r}: a teacher class can feed one target class "
                    "only. Fix the label map."
                )
            owner[i] = c
        groups[c] = list(dict.fromkeys((groups[c] or []) + outputs))

    for entries, strict in ((label_map or {}, True), (shared_label_map or {}, False)):
        for target, names in entries.items():
            c = _target_index(target, target_labels, norm_target, teacher_name)
            names = [names] if isinstance(names, str) else list(names)
            outputs = []
            for name in names:
                found = _find_teacher_label(str(name), teacher_labels, whole, synonyms, teacher_name)
                if not found and strict:
                    close = close_matches(str(name), teacher_labels + [d for d in descriptions or [] if d])
                    raise ValueError(
                        f"The label map names {name!r} for target class {target!r}, but {teacher_name} has no such "
                        "label" + (f"; close matches: {close}" if close else "") + f". Its labels are "
                        f"{_shown(teacher_labels)}."
                    )
                outputs += found
            if outputs or not names or strict:
                take(c, outputs)
    for keys in (whole, synonyms):  # whole names for every class first, then synonyms, over outputs still free
        for c, key in enumerate(norm_target):
            if groups[c] is not None:
                continue
            found = [i for i in range(len(teacher_labels)) if key in keys[i] and i not in owner]
            if len(found) > 1:
                logger.warning(
                    "%s has %s outputs named like target class %r (%s): using the first, output %d. A label map can "
                    "name the ones to add up.",
                    teacher_name,
                    "two" if len(found) == 2 else len(found),
                    key,
                    ", ".join(repr(teacher_labels[i]) for i in found[:4]),
                    found[0],
                )
            if found:
                take(c, found[:1])
    how = {c: "label map" if groups[c] is not None else None for c in range(len(target_labels))}
    how |= {c: "name" for c in owner.values() if how[c] is None}
    # By meaning: the ImageNet classes below a target class in WordNet, the most specific target class first (`dog`
    # must not take the terriers of a target class `terrier`).
    wnids = imagenet_wnids(teacher_labels, descriptions)
    found_by_meaning = {}
    for c, key in enumerate(target_labels):
        if groups[c] is None:
            match = wordnet_match(key, wnids)
            if match:
                found_by_meaning[c] = match
    for c, (synset, outputs) in sorted(found_by_meaning.items(), key=lambda item: len(item[1][1])):
        free = [i for i in outputs if i not in owner]
        if free:
            take(c, free)
            how[c] = f"WordNet: below {synset_text(synset)}"
    for c, key in enumerate(norm_target):  # by words: every free output with the class's words in a synonym
        if groups[c] is None:
            found = [i for i in range(len(teacher_labels)) if i not in owner and _word_match(key, synonyms[i])]
            if found:
                take(c, found)
                how[c] = "words"
    result = [g or [] for g in groups]
    if any(h not in (None, "name", "label map") for h in how.values()):  # the pool logs the mapping; this says why
        _log_mapping(teacher_name, result, teacher_labels, target_labels, how)
    if not any(result):
        if is_generic(teacher_labels):
            hint = " Its labels are generic (LABEL_0, ...): give the checkpoint real `id2label` names."
        elif is_generic(target_labels):
            hint = " The target's labels are generic (LABEL_0, ...): give the dataset's ClassLabel real names."
        else:
            close = {
                t: closest_labels(t, teacher_labels + [d for d in descriptions or [] if d]) for t in target_labels
            }
            close_text = "; ".join(f"{t!r}: {v}" for t, v in list(close.items())[:8] if v)
            hint = (
                (f" Closest teacher labels: {close_text}." if close_text else " No teacher label is close to any.")
                + " Check that it was trained for the same classes, map its labels onto the target's with a label "
                "map (--label_map), or drop it from the pool."
            )
        raise ValueError(
            f"{teacher_name} shares no label with the target task: its labels are {_shown(teacher_labels)}, "
            f"the target's are {list(target_labels[:8])}.{hint}"
        )
    return LabelMapping(result, teacher_labels, target_labels)


def _log_mapping(teacher_name, groups, teacher_labels, target_labels, how) -> None:
    """Show the mapping before any training: target class <- teacher labels (how they were matched)."""
    parts = []
    for c, g in enumerate(groups):
        shown = ", ".join(repr(teacher_labels[i]) for i in g[:4]) + (f" +{len(g) - 4} more" if len(g) > 4 else "")
        parts.append(
            f"{target_labels[c]} <- {shown or 'nothing'}"
            + (f" [{how[c]}]" if how.get(c) not in (None, "name") else "")
        )
    logger.info("%s label mapping: %s", teacher_name, "; ".join(parts))


def _target_index(target: str, target_labels: list[str], norm_target: list[str], teacher_name: str) -> int:
    key = normalize_label(target)
    if key in norm_target:
        return norm_target.index(key)
    close = close_matches(target, target_labels)
    raise ValueError(
        f"The label map (for {teacher_name}) names target class {target!r}, which the target task does not have"
        + (f"; close matches: {close}" if close else "")
        + f". The target classes are {_shown(target_labels, 20)}."
    )


def _find_teacher_label(name: str, teacher_labels: list[str], whole, synonyms, teacher_name: str) -> list[int]:
    """The teacher output a label-map entry names: by label or description, else by synonym; [] when none."""
    key = normalize_label(name)
    for keys in (whole, synonyms):
        found = [i for i in range(len(teacher_labels)) if key in keys[i]]
        if len(found) == 1:
            return found
        if len(found) > 1:
            raise ValueError(
                f"The label map names {name!r}, which matches {len(found)} outputs of {teacher_name} "
                f"({', '.join(repr(teacher_labels[i]) for i in found[:6])}): name each by its own label."
            )
    return []


def label_keys(teacher_labels: Sequence[str], descriptions: Sequence[str | None] | None = None) -> set[str]:
    """Every name a label map may use for some output of a teacher: labels, descriptions, synonyms (normalised)."""
    whole, synonyms = _teacher_keys([str(t) for t in teacher_labels], descriptions)
    return set().union(*whole, *synonyms)


def load_label_map(label_map: str | os.PathLike | Mapping | None) -> dict | None:
    """Read and check a label map: a JSON file or a dict, `{target label: [teacher labels]}` for every teacher,
    and/or `{teacher id: {target label: [teacher labels]}}` for one teacher.

    A value that is a string is one teacher label. Returns the map as a plain dict (None for None); raises
    `ValueError` for a file that is not JSON, or values of the wrong type.

    >>> load_label_map({"cat": ["tabby, tabby cat", "tiger cat"], "org/vit": {"dog": "beagle"}})
    {'cat': ['tabby, tabby cat', 'tiger cat'], 'org/vit': {'dog': ['beagle']}}
    """
    if label_map is None:
        return None
    source = "label_map"
    if isinstance(label_map, (str, os.PathLike)):
        source = f"Label map file {str(label_map)!r}"
        try:
            label_map = read_json(label_map, what=source)
        except FileNotFoundError:
            raise FileNotFoundError(f"{source} does not exist.") from None
        except (ValueError, UnicodeDecodeError) as err:
            raise ValueError(
                f'{source} is not valid JSON ({err}): write {{"target label": ["teacher label", ...]}}.'
            ) from None
    if not isinstance(label_map, Mapping):
        raise TypeError(
            f"{source} must be a JSON object / dict {{target label: [teacher labels]}}; got {type(label_map).__name__}."
        )

    def entries(mapping: Mapping, where: str) -> dict[str, list[str]]:
        out = {}
        for target, names in mapping.items():
            if isinstance(names, str):
                names = [names]
            if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
                raise ValueError(
                    f"{where}: the value for {target!r} must be a teacher label or a list of them; got {names!r}."
                )
            out[str(target)] = list(names)
        return out

    result: dict = {}
    for key, value in label_map.items():
        if isinstance(value, Mapping):
            result[str(key)] = entries(value, f"{source}, teacher {key!r}")
        else:
            result.update(entries({key: value}, source))
    return result


# ------------------------------------------------------------------------------------------------ WordNet (ImageNet)


@functools.lru_cache(maxsize=1)
def _wordnet() -> dict:
    """The WordNet 3.0 hierarchy above the ImageNet-1k classes (package data; see hf_mrl/data/README.md)."""
    from importlib import resources

    table = json.loads(resources.files("hf_mrl.data").joinpath("imagenet_wordnet.json").read_text(encoding="utf-8"))
    synsets = table["synsets"]
    ancestors = {}
    for wnid, _ in table["imagenet_classes"]:
        seen, todo = set(), [wnid]
        while todo:
            w = todo.pop()
            if w not in seen:
                seen.add(w)
                todo += synsets[w]["parents"]
        ancestors[wnid] = seen
    by_name: dict[str, list[str]] = {}
    for wnid, name in table["imagenet_classes"]:
        by_name.setdefault(normalize_label(name), []).append(wnid)
    return {**table, "ancestors": ancestors, "by_name": by_name}


def imagenet_wnids(
    teacher_labels: Sequence[str], descriptions: Sequence[str | None] | None = None
) -> list[str | None]:
    """The ImageNet-1k synset (`n02123045`) each teacher output stands for, None where its name names none.

    A 1,000-output teacher whose names follow ImageNet's order is read by position (ImageNet has two `crane`s and
    two `maillot`s); otherwise an output is identified by its wnid, or by an ImageNet class name that is unique.
    """
    table = _wordnet()
    classes = table["imagenet_classes"]
    names = [
        {normalize_label(n) for n in (label, (descriptions or [None] * len(teacher_labels))[i]) if n}
        for i, label in enumerate(map(str, teacher_labels))
    ]
    if len(teacher_labels) == len(classes):
        hits = sum(w.lower() in n or normalize_label(name) in n for (w, name), n in zip(classes, names, strict=True))
        if hits >= 0.95 * len(classes):
            return [w for w, _ in classes]
    wnids: list[str | None] = []
    known = table["ancestors"]
    for n in names:
        found = {k for k in n if k in known} | {w for k in n for w in table["by_name"].get(k, [])}
        wnids.append(found.pop() if len(found) == 1 else None)
    return wnids


def wordnet_match(target: str, wnids: Sequence[str | None]) -> tuple[str, list[int]] | None:
    """`(synset, outputs)`: the outputs whose ImageNet synset lies at or below the first WordNet sense of `target`
    (in WordNet's sense order) that has any; None when no sense has one (or `target` is not a WordNet noun)."""
    if not any(wnids):
        return None
    table = _wordnet()
    key = normalize_label(target)
    senses = table["senses"].get(key) or (table["senses"].get(key[:-1]) if key.endswith("s") else None) or []
    for synset in senses:
        outputs = [i for i, w in enumerate(wnids) if w and synset in table["ancestors"][w]]
        if outputs:
            return synset, outputs
    return None


def synset_text(wnid: str) -> str:
    """`n02121620` -> `cat, true cat (n02121620)`, for logs and cards."""
    lemmas = _wordnet()["synsets"].get(wnid, {}).get("lemmas", [])
    return f"{', '.join(lemmas[:3])} ({wnid})"


def _word_match(key: str, synonyms: set[str]) -> bool:
    """Whether the words of `key` appear, in order and whole, in one of the synonyms (`cat` in `tiger cat`)."""
    words = key.split()
    for s in synonyms:
        tokens = s.split()
        if any(tokens[i : i + len(words)] == words for i in range(len(tokens) - len(words) + 1)):
            return True
    return False


def closest_labels(target: str, teacher_labels: Sequence[str], n: int = 5) -> list[str]:
    """The teacher labels closest to a target class: those that contain its words, then those spelt alike, then those
    that contain it as a part of a word (`cat` in `catamaran`)."""
    key = normalize_label(target)
    found = [t for t in teacher_labels if _word_match(key, set(label_synonyms(t)) | {normalize_label(t)})]
    found += close_matches(target, teacher_labels, n=n)
    found += [t for t in teacher_labels if key in normalize_label(t)]
    return list(dict.fromkeys(found))[:n]
