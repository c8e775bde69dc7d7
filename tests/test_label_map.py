"""Label alignment for real checkpoints: synonyms, timm's ImageNet descriptions, label maps (several teacher classes
summed into one target class), and the messages for labels that do not exist."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from helpers import make_images, make_timm_teacher

from hf_mrl import ModelPool
from hf_mrl.pool.labels import imagenet_descriptions, load_label_map, map_labels

# ImageNet-1k classes (index: timm description) used below.
TABBY, TIGER_CAT, PERSIAN, BEAGLE, GOLDFISH, AIRLINER = 281, 282, 283, 162, 1, 404
TARGET = ["cat", "dog", "goldfish", "airplane", "truck", "ship", "frog", "horse", "deer", "bird"]


@pytest.fixture(scope="module")
def imagenet_teacher(tmp_path_factory):
    """A tiny timm classifier with a 1000-way ImageNet head and no label names in its config, as many timm
    checkpoints are: the pool takes the classes (WordNet ids) and their descriptions from timm's ImageNetInfo."""
    import timm

    folder = tmp_path_factory.mktemp("imagenet") / "teacher"
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=1000).eval()
    model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (3, 16, 16), "crop_pct": 1.0}
    model.pretrained_cfg.pop("label_names", None)
    with torch.no_grad():  # spread the logits so that the sums below are far from uniform
        model.get_classifier().weight.mul_(50.0)
    timm.models.save_for_hf(model, str(folder), safe_serialization=True)
    assert "label_names" not in json.loads((folder / "config.json").read_text())
    return folder


# ----------------------------------------------------------------------------------------------- automatic


def test_comma_separated_synonyms_match():
    teacher = ["tabby, tabby cat", "Egyptian cat", "goldfish, Carassius auratus"]
    mapping = map_labels(teacher, ["goldfish", "tabby cat", "dog"])
    assert mapping.index == [2, 0, -1]


def test_a_whole_name_wins_over_a_synonym():
    mapping = map_labels(["tabby cat, tabby", "tabby"], ["tabby"])
    assert mapping.index == [1]


def test_imagenet_descriptions_match_wordnet_ids():
    synsets = ["n02123045", "n02085620", "n01443537"]
    descriptions = imagenet_descriptions(synsets)
    assert descriptions[0] == "tabby, tabby cat" and descriptions[2] == "goldfish, Carassius auratus"
    assert imagenet_descriptions(["cat", "dog"]) is None
    mapping = map_labels(synsets, ["Chihuahua", "goldfish", "tabby"], descriptions=descriptions)
    assert mapping.index == [1, 2, 0]


# ----------------------------------------------------------------------------------------------- label maps


def test_label_map_sums_several_teacher_classes():
    teacher = ["tabby, tabby cat", "beagle", "tiger cat", "car", "Persian cat"]
    label_map = {"cat": ["tabby", "tiger cat", "persian cat"], "dog": []}  # [] keeps beagle (a dog) out
    mapping = map_labels(teacher, ["cat", "dog"], label_map=label_map)
    assert mapping.groups == [[0, 2, 4], []]
    assert mapping.to_dict() == {"cat": ["tabby, tabby cat", "tiger cat", "Persian cat"], "dog": []}
    logits = torch.tensor([[1.0, 2.0, 0.5, 9.0, -1.0]])
    # Only the three cat outputs are used: a softmax over them sums to 1, all on "cat".
    torch.testing.assert_close(mapping.probs(logits), torch.tensor([[1.0, 0.0]]))
    both = map_labels(teacher, ["cat", "dog"], label_map={"cat": ["tabby", "tiger cat"], "dog": ["beagle"]})
    p = torch.softmax(torch.tensor([1.0, 2.0, 0.5]), -1)  # outputs 0, 1, 2
    torch.testing.assert_close(both.probs(logits), torch.stack([p[0] + p[2], p[1]]).unsqueeze(0))


def test_label_map_names_the_classes_of_a_checkpoint_without_label_names():
    """A fine-tuned checkpoint saved with transformers' placeholders: the map says what LABEL_0, LABEL_1 are."""
    with pytest.raises(ValueError, match="shares no label"):
        map_labels(["LABEL_0", "LABEL_1"], ["cat", "dog"])
    mapping = map_labels(["LABEL_0", "LABEL_1"], ["cat", "dog"], label_map={"cat": ["LABEL_1"], "dog": "label_0"})
    assert mapping.index == [1, 0]


def test_label_map_with_an_empty_list_uncovers_a_class():
    mapping = map_labels(["cat", "dog"], ["cat", "dog"], label_map={"dog": []})
    assert mapping.coverage == [True, False]


def test_label_map_unknown_target_label_lists_close_matches():
    with pytest.raises(ValueError) as info:
        map_labels(["tabby, tabby cat"], ["cat", "dog"], "Teacher 'org/vit'", label_map={"cats": ["tabby"]})
    message = str(info.value)
    assert "names target class 'cats', which the target task does not have; close matches: ['cat']" in message
    assert "The target classes are ['cat', 'dog']" in message


def test_label_map_unknown_teacher_label_lists_close_matches():
    with pytest.raises(ValueError) as info:
        map_labels(["tabby, tabby cat", "tiger cat"], ["cat"], "Teacher 'org/vit'", label_map={"cat": ["tabby kat"]})
    message = str(info.value)
    assert "names 'tabby kat' for target class 'cat', but Teacher 'org/vit' has no such label" in message
    assert "close matches: ['tabby, tabby cat']" in message


def test_label_map_ambiguous_and_doubly_mapped_teacher_labels():
    with pytest.raises(ValueError, match=r"'crane', which matches 2 outputs .* name each by its own label"):
        map_labels(["crane", "crane", "heron"], ["bird"], label_map={"bird": ["crane"]})
    with pytest.raises(ValueError, match=r"output 'tabby' is mapped onto two target classes, 'cat' and 'pet'"):
        map_labels(["tabby", "dog"], ["cat", "pet"], label_map={"cat": ["tabby"], "pet": ["tabby", "dog"]})


def test_load_label_map_from_a_file(tmp_path):
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"cat": "tabby", "org/vit": {"dog": ["beagle", "basset"]}}))
    assert load_label_map(path) == {"cat": ["tabby"], "org/vit": {"dog": ["beagle", "basset"]}}
    path.write_text("{cat: tabby}")
    with pytest.raises(ValueError, match=r"Label map file .* is not valid JSON"):
        load_label_map(path)
    with pytest.raises(ValueError, match=r"the value for 'cat' must be a teacher label or a list of them; got 3"):
        load_label_map({"cat": 3})


# ----------------------------------------------------------------------------------------------- in the pool


def test_imagenet_teacher_on_a_ten_class_target(imagenet_teacher, caplog):
    """A 1000-class ImageNet teacher against a 10-class target: the map joins ImageNet classes into target classes
    (written as WordNet ids, descriptions or synonyms), goldfish matches by synonym; probabilities add up."""
    label_map = {"cat": ["tabby", "tiger cat", "n02123394"], "dog": ["beagle"], "airplane": ["airliner"]}
    # The other classes would match by meaning (WordNet: test_wordnet_labels.py); here the map leaves them out.
    label_map |= {name: [] for name in TARGET[4:]}
    with caplog.at_level(logging.INFO, logger="hf_mrl.pool.model_pool"):
        pool = ModelPool([str(imagenet_teacher)], TARGET, label_map=label_map)
    teacher = pool.teachers[0]
    assert len(teacher.label_names) == 1000 and teacher.label_names[TABBY] == "n02123045"
    (mapping,) = pool.mappings
    assert mapping.groups[:4] == [[TABBY, TIGER_CAT, PERSIAN], [BEAGLE], [GOLDFISH], [AIRLINER]]
    assert mapping.coverage == [True] * 4 + [False] * 6
    used = pool.label_mapping[teacher.id]
    assert used["cat"] == ["n02123045", "n02123159", "n02123394"] and used["goldfish"] == ["n01443537"]
    assert used["truck"] == [] and json.loads(json.dumps(pool.label_mapping)) == pool.label_mapping
    assert any("cat <- ['n02123045', 'n02123159', 'n02123394']" in r.getMessage() for r in caplog.records)

    images = make_images(5, size=16)
    probs = pool.probs(images)[:, 0]  # (N, C)
    logits = teacher.logits(images)  # (N, 1000)
    classes = [TABBY, TIGER_CAT, PERSIAN, BEAGLE, GOLDFISH, AIRLINER]
    p = torch.softmax(logits[:, classes], dim=-1)
    expected = torch.zeros(5, len(TARGET))
    expected[:, 0] = p[:, 0] + p[:, 1] + p[:, 2]
    expected[:, 1:4] = p[:, 3:6]
    torch.testing.assert_close(probs, expected)
    assert (expected[:, 0] - p.max(-1).values).abs().max() > 1e-3  # a real sum, not one output

    again = ModelPool([str(imagenet_teacher)], TARGET, label_map=pool.label_mapping)
    assert again.mappings[0].groups == mapping.groups


def test_per_teacher_and_shared_maps(imagenet_teacher, tmp_path):
    small = make_timm_teacher(tmp_path / "small", ["cat", "dog"])
    label_map = {"cat": ["tabby"], str(imagenet_teacher): {"dog": ["beagle", "n02088238"]}}
    pool = ModelPool([str(imagenet_teacher), str(small)], TARGET, label_map=label_map)
    big, own = pool.mappings
    assert big.groups[:2] == [[TABBY], [BEAGLE, 161]]
    assert own.groups[:2] == [[0], [1]]  # the shared "tabby" is not its label: "cat" still matches by name


def test_pool_label_map_errors_name_what_is_unknown(imagenet_teacher, tmp_path):
    with pytest.raises(ValueError) as info:
        ModelPool([str(imagenet_teacher)], TARGET, label_map={"cat": ["tabby kitty"]})
    assert "names 'tabby kitty' for target class 'cat', but no teacher in the pool has such a label" in str(info.value)
    assert "close matches: ['tabby, tabby cat']" in str(info.value)
    with pytest.raises(ValueError) as info:
        ModelPool([str(imagenet_teacher)], TARGET, label_map={"kat": ["tabby"]})
    assert "names target class 'kat', which the target task does not have; close matches: ['cat']" in str(info.value)
    with pytest.raises(ValueError) as info:
        ModelPool([str(imagenet_teacher)], TARGET, label_map={str(imagenet_teacher) + "x": {"cat": ["tabby"]}})
    assert "has entries for teacher" in str(info.value) and "which is not in the pool" in str(info.value)
    assert f"close matches: ['{imagenet_teacher}']" in str(info.value)


def test_transformers_imagenet_teacher_matches_by_synonym(tmp_path):
    """A transformers checkpoint whose id2label holds ImageNet's comma-separated names, as real ones do."""
    from helpers import make_transformers_teacher
    from timm.data import ImageNetInfo

    names = ImageNetInfo().label_descriptions()
    folder = make_transformers_teacher(tmp_path / "vit-like", names)
    pool = ModelPool([str(folder)], ["tabby cat", "Goldfish", "airliner", "spaceship"])
    assert pool.mappings[0].groups == [[TABBY], [GOLDFISH], [AIRLINER], []]
    assert pool.label_mapping[str(folder)]["tabby cat"] == ["tabby, tabby cat"]
