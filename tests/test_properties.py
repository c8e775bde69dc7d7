"""Property tests (hypothesis) for the two parsers of user input: the pool file and the label mapping."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from hf_mrl.pool.labels import is_generic, map_labels, normalize_label
from hf_mrl.pool.model_pool import parse_pool_file

# Derandomized: CI sees the same examples on every run (a failure is a regression, not a lucky draw).
SETTINGS = settings(max_examples=60, deadline=None, derandomize=True)
# The costlier generated label spaces; their assumptions reject many draws by design.
FEWER = settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.filter_too_much])

# ----------------------------------------------------------------------------------------------- pool files

_segment = st.from_regex(r"[a-z0-9]{1,8}(-[a-z0-9]{1,8}){0,2}", fullmatch=True)
_repo_id = st.builds(lambda org, name: f"{org}/{name}", _segment, _segment)
_revision = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._]{0,11}", fullmatch=True)
_teacher = st.builds(lambda repo, rev: f"{repo}@{rev}" if rev else repo, _repo_id, st.none() | _revision)
_blank = st.sampled_from(["", "   ", "\t", "# a comment", "   # indented comment", "#org/commented-out"])
_pad = st.sampled_from(["", " ", "  ", "\t"])
_trailing = st.sampled_from(["", "  # why this teacher", "#no space", "\t# tab"])
_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=300)


def _parse(text: str) -> list[str]:
    with tempfile.TemporaryDirectory() as root:
        path = Path(root) / "pool.txt"
        path.write_text(text, encoding="utf-8")
        return parse_pool_file(path)


@SETTINGS
@given(data=st.data(), teachers=st.lists(_teacher, min_size=1, max_size=8, unique=True))
def test_pool_file_round_trip(data, teachers):
    """Comments, blank lines, indentation and trailing comments around valid ids: the ids come back, in order."""
    lines = []
    for teacher in teachers:
        lines += data.draw(st.lists(_blank, max_size=2))
        lines.append(data.draw(_pad) + teacher + data.draw(_pad) + data.draw(_trailing))
    lines += data.draw(st.lists(_blank, max_size=2))
    newline = data.draw(st.sampled_from(["\n", "\r\n"]))
    assert _parse(newline.join(lines)) == teachers


@SETTINGS
@given(teachers=st.lists(_teacher, min_size=1, max_size=6, unique=True), data=st.data())
def test_pool_file_duplicate_is_named_with_both_lines(teachers, data):
    i = data.draw(st.integers(0, len(teachers) - 1))
    lines = [*teachers, teachers[i]]
    with pytest.raises(ValueError, match=rf":{len(lines)}: duplicate teacher .*first on line {i + 1}"):
        _parse("\n".join(lines))


@SETTINGS
@given(text=_text)
def test_pool_file_any_text_parses_or_is_a_value_error(text):
    """Whatever the file holds, the parser returns clean entries or raises ValueError: never another error."""
    try:
        entries = _parse(text)
    except ValueError as err:
        assert str(err)
        return
    assert entries and len(entries) == len(set(entries))
    for entry in entries:
        assert entry == entry.strip() and "#" not in entry and not any(c.isspace() for c in entry)


@SETTINGS
@given(lines=st.lists(st.sampled_from(["", "  ", "# only comments", "\t# x"]), max_size=6))
def test_pool_file_without_entries_is_refused(lines):
    with pytest.raises(ValueError, match="lists no teacher"):
        _parse("\n".join(lines))


# ----------------------------------------------------------------------------------------------- label mapping

_word = st.from_regex(r"[a-z][a-z0-9]{0,6}", fullmatch=True)
_name_words = st.lists(_word, min_size=1, max_size=3)
_separator = st.sampled_from([" ", "_", "-", "  ", "__", " - "])


def _spell(words: list[str], data) -> str:
    """One way of writing a label: any case, any separators, surrounding spaces."""
    sep = data.draw(_separator)
    text = sep.join(w.upper() if data.draw(st.booleans()) else w for w in words)
    return data.draw(st.sampled_from(["", " "])) + text + data.draw(st.sampled_from(["", "  "]))


@SETTINGS
@given(words=_name_words, data=st.data())
def test_normalisation_ignores_case_and_separators_and_is_idempotent(words, data):
    a, b = _spell(words, data), _spell(words, data)
    assert normalize_label(a) == normalize_label(b) == " ".join(words)
    assert normalize_label(normalize_label(a)) == normalize_label(a)


@st.composite
def _task(draw):
    """Target names (unique after normalisation) and teacher names: some spell target names, some are extra."""
    target_words = draw(st.lists(_name_words, min_size=1, max_size=5, unique_by=lambda w: " ".join(w)))
    target = [_spell(w, draw(st.data())) for w in target_words]
    extra = draw(st.lists(_name_words, max_size=3))
    chosen = draw(st.lists(st.sampled_from(target_words), max_size=len(target_words) + 2))
    teacher = [_spell(w, draw(st.data())) for w in chosen + extra]
    teacher = draw(st.permutations(teacher))
    return target, teacher


@FEWER
@given(task=_task(), seed=st.integers(0, 2**16))
def test_mapping_matches_names_and_gives_distributions_over_the_target(task, seed):
    target, teacher = task
    norm_teacher = [normalize_label(n) for n in teacher]
    shared = {normalize_label(t) for t in target} & set(norm_teacher)
    if not shared or (is_generic(teacher) and is_generic(target)):
        with pytest.raises(ValueError):
            map_labels(teacher, target)
        return
    mapping = map_labels(teacher, target)
    assert len(mapping.index) == len(target)
    for c, i in enumerate(mapping.index):
        t = normalize_label(target[c])
        if i >= 0:
            assert norm_teacher[i] == t and norm_teacher.index(t) == i  # the first teacher output of that name
        else:
            assert t not in norm_teacher
    assert mapping.num_covered == len(shared)

    logits = torch.randn(5, len(teacher), generator=torch.Generator().manual_seed(seed)) * 4
    probs = mapping.probs(logits)
    assert probs.shape == (5, len(target)) and (probs >= 0).all()
    torch.testing.assert_close(probs.sum(-1), torch.ones(5))
    uncovered = [c for c, covered in enumerate(mapping.coverage) if not covered]
    assert (probs[:, uncovered] == 0).all()


@FEWER
@given(task=_task(), seed=st.integers(0, 2**16), data=st.data())
def test_mapping_does_not_depend_on_the_teacher_output_order(task, seed, data):
    target, teacher = task
    assume(len({normalize_label(n) for n in teacher}) == len(teacher))  # with duplicates the first one wins
    assume({normalize_label(t) for t in target} & {normalize_label(n) for n in teacher})
    order = data.draw(st.permutations(range(len(teacher))))
    logits = torch.randn(4, len(teacher), generator=torch.Generator().manual_seed(seed))
    permuted = map_labels([teacher[i] for i in order], target).probs(logits[:, list(order)])
    torch.testing.assert_close(permuted, map_labels(teacher, target).probs(logits))


@SETTINGS
@given(n_teacher=st.integers(1, 6), n_target=st.integers(1, 6), data=st.data())
def test_placeholder_names_on_both_sides_never_map(n_teacher, n_target, data):
    fmt = data.draw(st.sampled_from(["LABEL_{}", "label_{}", "LABEL{}", "Label {}"]))
    with pytest.raises(ValueError, match="placeholder label names"):
        map_labels([fmt.format(i) for i in range(n_teacher)], [f"LABEL_{i}" for i in range(n_target)])


@SETTINGS
@given(
    teacher=st.lists(st.text(max_size=12), max_size=6),
    target=st.lists(st.text(max_size=12), max_size=6),
)
def test_mapping_any_names_maps_or_is_a_value_error(teacher, target):
    try:
        mapping = map_labels(teacher, target)
    except ValueError:
        return
    assert len(mapping.index) == len(target) and mapping.num_covered >= 1
    assert all(-1 <= i < len(teacher) for i in mapping.index)
