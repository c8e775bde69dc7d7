"""Build `hf_mrl/data/imagenet_wordnet.json`: the WordNet noun hierarchy above the 1,000 ImageNet-1k classes.

    apt-get install wordnet-base        # Debian's WordNet 3.0 database, under /usr/share/wordnet
    python tools/build_imagenet_wordnet.py [--wordnet /usr/share/wordnet] [--out hf_mrl/data/imagenet_wordnet.json]

ImageNet's classes are WordNet 3.0 noun synsets; their ids (`n02123045`) and names (`tabby, tabby cat`) are read from
timm's `timm/data/_info/imagenet_synsets.txt` and `imagenet_synset_to_lemma.txt` (installed with timm). The table
keeps, for every synset at or above an ImageNet class (hypernyms and instance hypernyms): its lemmas and parents; and
for every lemma of those synsets, its senses among them in WordNet's sense order (most frequent first), so that a
target class `cat` resolves to `cat, true cat` (sense 1) rather than `big cat, cat`. See hf_mrl/data/README.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def read_nouns(wordnet: Path) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """`data.noun` -> (lemmas per wnid, hypernym wnids per wnid)."""
    lemmas, parents = {}, {}
    with open(wordnet / "data.noun", encoding="utf-8") as f:
        for line in f:
            if line.startswith("  "):  # the license header
                continue
            fields = line.split(" | ")[0].split()
            wnid = "n" + fields[0]
            count = int(fields[3], 16)
            words = [fields[4 + 2 * i].replace("_", " ") for i in range(count)]
            pos = 4 + 2 * count
            n_ptr = int(fields[pos])
            ups = []
            for i in range(n_ptr):
                symbol, offset, ptr_pos = fields[pos + 1 + 4 * i : pos + 4 + 4 * i]
                if symbol in ("@", "@i") and ptr_pos == "n":
                    ups.append("n" + offset)
            lemmas[wnid] = [w.split("(")[0] for w in words]  # adjective markers such as `(p)` dropped
            parents[wnid] = ups
    return lemmas, parents


def read_senses(wordnet: Path) -> dict[str, list[str]]:
    """`index.noun` -> lemma (spaces for `_`, lower case) -> its synsets in sense order."""
    senses = {}
    with open(wordnet / "index.noun", encoding="utf-8") as f:
        for line in f:
            if line.startswith("  "):
                continue
            fields = line.split()
            lemma, synset_cnt, p_cnt = fields[0], int(fields[2]), int(fields[3])
            offsets = fields[4 + p_cnt + 2 :]
            assert len(offsets) == synset_cnt, line
            senses[lemma.replace("_", " ").lower()] = ["n" + o for o in offsets]
    return senses


def main(argv=None) -> None:
    import timm

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--wordnet", default="/usr/share/wordnet")
    p.add_argument(
        "--out", default=str(Path(__file__).resolve().parents[1] / "hf_mrl" / "data" / "imagenet_wordnet.json")
    )
    args = p.parse_args(argv)
    wordnet = Path(args.wordnet)
    info = Path(timm.__file__).parent / "data" / "_info"
    wnids = (info / "imagenet_synsets.txt").read_text().split()
    names = dict(line.split("\t", 1) for line in (info / "imagenet_synset_to_lemma.txt").read_text().splitlines())
    assert len(wnids) == 1000, len(wnids)
    lemmas, parents = read_nouns(wordnet)
    closure, todo = set(), list(wnids)
    while todo:
        w = todo.pop()
        if w not in closure:
            closure.add(w)
            todo += parents[w]
    senses = read_senses(wordnet)
    words = {}
    for w in sorted(closure):
        for lemma in lemmas[w]:
            key = lemma.lower()
            if key not in words:
                words[key] = [s for s in senses.get(key, []) if s in closure]
    table = {
        "source": "WordNet 3.0 (Princeton University; Debian package wordnet-base 1:3.0-37), WordNet 3.0 license",
        "imagenet_classes": [[w, names[w].strip()] for w in wnids],
        "synsets": {w: {"lemmas": lemmas[w], "parents": parents[w]} for w in sorted(closure)},
        "senses": dict(sorted(words.items())),
    }
    Path(args.out).write_text(json.dumps(table, separators=(",", ":"), ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"{args.out}: {len(wnids)} classes, {len(closure)} synsets, {len(words)} lemmas")


if __name__ == "__main__":
    main()
