"""Mapping a teacher's label names onto the target's."""

from __future__ import annotations

import pytest
import torch

from hf_mrl.pool.labels import map_labels, normalize_label


@pytest.mark.parametrize(
    ("teacher", "target"),
    [
        ("Golden Retriever", "golden_retriever"),
        ("golden-retriever", "GOLDEN RETRIEVER"),
        ("  Tabby_Cat ", "tabby cat"),
        ("tabby__cat", "Tabby  Cat"),
    ],
)
def test_names_match_ignoring_case_spaces_and_separators(teacher, target):
    assert normalize_label(teacher) == normalize_label(target)
    assert map_labels(["other", teacher], ["x", target]).index == [-1, 1]


def test_different_names_do_not_match():
    assert normalize_label("cat") != normalize_label("cats")
    assert map_labels(["cat", "dog"], ["cats", "dog"]).index == [-1, 1]


def test_teacher_with_extra_classes_renormalises_over_covered_classes():
    # Teacher outputs: [dog, EXTRA, cat, EXTRA2]; target: [cat, dog].
    mapping = map_labels(["dog", "car", "cat", "plane"], ["cat", "dog"])
    assert mapping.index == [2, 0]
    assert mapping.coverage == [True, True]
    logits = torch.tensor([[1.0, 5.0, 2.0, 7.0], [0.0, 0.0, 0.0, 0.0]])
    probs = mapping.probs(logits)
    assert probs.shape == (2, 2)
    # The extra classes take no mass: the softmax over (cat, dog) only.
    expected = torch.softmax(torch.tensor([[2.0, 1.0], [0.0, 0.0]]), dim=-1)
    torch.testing.assert_close(probs, expected)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2))


def test_teacher_covering_part_of_the_target_gives_zero_to_uncovered_classes():
    mapping = map_labels(["b", "d"], ["a", "b", "c", "d"])
    assert mapping.index == [-1, 0, -1, 1]
    assert mapping.coverage == [False, True, False, True]
    assert mapping.num_covered == 2
    probs = mapping.probs(torch.tensor([[3.0, 1.0]]))
    assert probs[0, 0] == 0 and probs[0, 2] == 0
    torch.testing.assert_close(probs[0, [1, 3]], torch.softmax(torch.tensor([3.0, 1.0]), -1))
    torch.testing.assert_close(probs.sum(-1), torch.ones(1))


def test_permuted_label_order_maps_by_name():
    target = ["zero", "one", "two"]
    mapping = map_labels(["two", "zero", "one"], target)
    assert mapping.index == [1, 2, 0]
    logits = torch.tensor([[9.0, 1.0, 4.0]])  # two=9, zero=1, one=4
    probs = mapping.probs(logits)
    assert probs.argmax(-1).item() == target.index("two")
    torch.testing.assert_close(probs, torch.softmax(torch.tensor([[1.0, 4.0, 9.0]]), -1))


def test_no_shared_label_names_the_teacher():
    with pytest.raises(ValueError, match="org/birds") as info:
        map_labels(["sparrow", "eagle"], ["cat", "dog"], teacher_name="Teacher 'org/birds'")
    assert "LABEL_0" not in str(info.value)  # real names: the generic hint does not apply


def test_generic_label_names_give_the_id2label_hint():
    with pytest.raises(ValueError, match="id2label") as info:
        map_labels(["LABEL_0", "LABEL_1", "LABEL_2"], ["cat", "dog"], teacher_name="Teacher 'org/anon'")
    assert "org/anon" in str(info.value)
    assert "generic" in str(info.value)


def test_target_names_must_be_unique_after_normalisation():
    with pytest.raises(ValueError, match="unique"):
        map_labels(["cat"], ["Cat", "cat"])


def test_empty_target_is_refused():
    with pytest.raises(ValueError, match="no label names"):
        map_labels(["cat"], [])
