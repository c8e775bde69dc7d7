"""Labels by meaning: ImageNet teachers matched through the WordNet 3.0 hierarchy shipped as package data, then by
words; the closest teacher labels when nothing matches."""

from __future__ import annotations

import logging
import random

import pytest
from test_label_map import imagenet_teacher  # noqa: F401  (the fixture)

from hf_mrl.pool.labels import imagenet_wnids, map_labels


def _imagenet_names() -> list[str]:
    """The 1,000 ImageNet-1k class names as checkpoints carry them (`tabby, tabby cat`), from timm, not hf_mrl."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo("imagenet-1k")
    return [info.index_to_description(i) for i in range(1000)]


def _imagenet_wnids() -> list[str]:
    from timm.data import ImageNetInfo

    return list(ImageNetInfo("imagenet-1k").label_names())


def _named(mapping, names) -> dict[str, set[str]]:
    return {t: {names[i] for i in g} for t, g in zip(mapping.target_labels, mapping.groups, strict=True)}


def test_imagenet_names_map_cat_dog_car_without_a_label_map(caplog):
    names = _imagenet_names()
    with caplog.at_level(logging.INFO, logger="hf_mrl.pool.labels"):
        mapping = map_labels(names, ["cat", "dog", "car"], "Teacher 'google/vit-base-patch16-224'")
    got = _named(mapping, names)
    cats = {"tabby, tabby cat", "tiger cat", "Persian cat", "Siamese cat, Siamese", "Egyptian cat"}
    assert cats <= got["cat"]
    assert not {n for n in got["cat"] if n.startswith(("lion", "tiger, Panthera", "leopard", "jaguar"))}  # big cats
    # The dog breeds: ImageNet classes 151 (Chihuahua) .. 268 (Mexican hairless); not wolves, foxes or hyenas.
    assert mapping.groups[1] == list(range(151, 269))
    assert {"timber wolf, grey wolf, gray wolf, Canis lupus", "red fox, Vulpes vulpes"}.isdisjoint(got["dog"])
    assert {"sports car, sport car", "convertible", "cab, hack, taxi, taxicab", "limousine, limo"} <= got["car"]
    assert {"car wheel", "car mirror", "passenger car, coach, carriage", "freight car"}.isdisjoint(got["car"])
    shown = " ".join(r.getMessage() for r in caplog.records)
    assert "cat <- 'tabby, tabby cat'" in shown and "WordNet: below cat, true cat (n02121620)" in shown


def test_wordnet_ids_with_descriptions_and_any_order():
    """timm checkpoints name their outputs by WordNet id; a teacher may also hold ImageNet classes in another order."""
    wnids = _imagenet_wnids()
    by_id = map_labels(wnids, ["cat", "dog"])
    assert by_id.groups[1] == list(range(151, 269))
    names = _imagenet_names()
    order = list(range(1000))
    random.Random(0).shuffle(order)
    shuffled = map_labels([names[i] for i in order], ["dog"])
    assert sorted(order[i] for i in shuffled.groups[0]) == list(range(151, 269))
    assert imagenet_wnids(["tabby, tabby cat", "crane", "something else"]) == ["n02123045", None, None]  # 2 cranes


def test_the_more_specific_target_class_takes_its_part_first():
    names = _imagenet_names()
    mapping = map_labels(names, ["dog", "terrier"])
    got = _named(mapping, names)
    assert "Airedale, Airedale terrier" in got["terrier"] and "beagle" in got["dog"]
    assert not got["dog"] & got["terrier"]


def test_label_map_overrides_and_words_follow():
    names = _imagenet_names()
    mapping = map_labels(names, ["cat", "dog"], label_map={"cat": ["tiger cat"]})
    assert _named(mapping, names)["cat"] == {"tiger cat"}
    # Not ImageNet names: by words, `cat` in `black cat toy`.
    words = map_labels(["black cat toy", "a dog bowl", "catamaran model"], ["cat", "dog"])
    assert words.groups == [[0], [1]]


def test_no_match_lists_the_closest_teacher_labels():
    with pytest.raises(ValueError) as info:
        map_labels(["catamaran", "doghouse", "carton"], ["cat", "dog"], "Teacher 'org/boats'")
    message = str(info.value)
    assert "shares no label with the target task" in message
    assert "Closest teacher labels: 'cat': ['carton', 'catamaran']; 'dog': ['doghouse']" in message, message


def test_pool_with_an_imagenet_teacher_needs_no_label_map(imagenet_teacher):  # noqa: F811 (the fixture)
    """Through ModelPool: a timm ImageNet checkpoint (WordNet ids as labels) against `cat`, `dog`, `car`."""
    from hf_mrl import ModelPool

    pool = ModelPool([str(imagenet_teacher)], ["cat", "dog", "car"])
    (mapping,) = pool.mappings
    assert mapping.coverage == [True, True, True]
    assert mapping.groups[1] == list(range(151, 269)) and 281 in mapping.groups[0] and 817 in mapping.groups[2]
