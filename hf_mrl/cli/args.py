"""Argument helpers shared by the `hf-mrl` commands: help with defaults, the config, data and logging flags."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import re

from hf_mrl.data.target import DEFAULT_TEST_SIZE, check_test_size
from hf_mrl.training.config import HYPERGRADIENTS, OUTER_LABELS, PROTOTYPE_INITS, MRLConfig


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """`--help` shows each flag's default (Hugging Face scripts do), except where there is none to show."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (
            "default" in text
            or action.default is None
            or action.default is False
            or action.default == argparse.SUPPRESS
        ):
            return text  # the help says it already, or there is nothing to show
        if not action.option_strings:
            return text
        if isinstance(action.default, bool):  # --flag / --no-flag, on by default
            return (text + " " if text else "") + "(default: on)"
        return (text + " " if text else "") + "(default: %(default)s)"


def _show_defaults(p: argparse.ArgumentParser) -> None:
    """Flags without help text still show their default (argparse prints nothing for a flag without help)."""
    for action in p._actions:
        shown = not (action.default is None or action.default is False or action.default == argparse.SUPPRESS)
        if action.help is None and action.option_strings and shown:
            action.help = "(default: %(default)s)"


# MRLConfig fields a user tunes, as `--name` flags (their help is the field's own documentation). Those with flags of
# their own (method, max_steps, batch sizes, outer_every, embedding, seed, checkpointing_steps) are not repeated.
_OWN_FLAGS = ("method", "max_steps", "batch_size", "unlabeled_batch_size", "outer_every", "embedding", "seed")


_CONFIG_FLAGS = tuple(f.name for f in dataclasses.fields(MRLConfig) if f.name not in (*_OWN_FLAGS, "checkpoint_every"))


_CHOICES = {"hypergradient": HYPERGRADIENTS, "outer_labels": OUTER_LABELS, "prototype_init": PROTOTYPE_INITS}


def _field_docs() -> dict[str, str]:
    """`name: text` of MRLConfig's Args section, one line each."""
    docs, name = {}, None
    for line in (MRLConfig.__doc__ or "").split("Args:", 1)[-1].splitlines():
        match = re.match(r"^ {8}(\w+): (.*)$", line)
        if match:
            name, docs[match.group(1)] = match.group(1), match.group(2)
        elif name and line.startswith(" " * 12):
            docs[name] += " " + line.strip()
    return docs


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("training hyperparameters (MRLConfig; see docs/method.md)")
    docs = _field_docs()
    for f in dataclasses.fields(MRLConfig):
        if f.name not in _CONFIG_FLAGS:
            continue
        text = docs.get(f.name, "").replace("%", "%%")
        if f.type in ("bool", bool):
            group.add_argument(f"--{f.name}", action=argparse.BooleanOptionalAction, default=f.default, help=text)
        else:
            kind = {"int": int, "float": float, "float | None": float}.get(str(f.type), str)
            kwargs = {"choices": _CHOICES[f.name]} if f.name in _CHOICES else {}
            group.add_argument(f"--{f.name}", type=kind, default=f.default, help=text, **kwargs)


def config_from_args(args: argparse.Namespace) -> MRLConfig:
    """The `MRLConfig` of `hf-mrl train` flags (ValueError for a value it refuses)."""
    return MRLConfig(
        method=args.method,
        max_steps=args.max_steps,
        seed=args.seed,
        embedding=args.embedding,
        outer_every=args.outer_every,
        batch_size=args.batch_size,
        unlabeled_batch_size=args.unlabeled_batch_size,
        checkpoint_every=args.checkpointing_steps,
        **{name: getattr(args, name) for name in _CONFIG_FLAGS},
    )


def add_data_arguments(p: argparse.ArgumentParser, dataset_default: str = "digits-ld:MUS") -> None:
    """The target-data flags, shared by `train` and `select` (read back by `data_options`)."""
    p.add_argument(
        "--dataset",
        default=dataset_default,
        help="`digits-ld[:SETTING]`, a Hub dataset id `org/name[@revision]`, an image folder or a save_to_disk folder",
    )
    p.add_argument("--dataset_config_name", help="the configuration of a Hub dataset (datasets.load_dataset's name)")
    splits = "default: the split named after the role, else `train` (or the only split)"
    p.add_argument("--labeled_split", help=f"split with labels, `datasets` slicing allowed ({splits})")
    p.add_argument("--unlabeled_split", help=f"split without (or with unused) labels ({splits})")
    p.add_argument("--test_split", help="split the results are measured on (default: `test`, else the labeled split)")
    p.add_argument(
        "--test_size",
        type=_test_size,
        default=DEFAULT_TEST_SIZE,
        help="the test part carved when the test role shares its split with another role: a fraction or a count "
        "(stratified by label and domain, seeded by --seed)",
    )
    p.add_argument(
        "--allow_test_overlap",
        action="store_true",
        help="accept labeled rows that are also test rows (refused by default); the results then say they are not "
        "test accuracies",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the labeled draw, the carving and the training")
    p.add_argument(
        "--labeled_per_class",
        type=int,
        help="labeled samples per class: drawn from Digits-LD (default 10), from a split shared with the unlabeled "
        "role (default 10), or from the labeled split (default: all of it)",
    )
    p.add_argument(
        "--domain_column",
        help="latent-domain column (string, integer or ClassLabel), evaluation only (default: domain)",
    )
    p.add_argument("--image_column", default="image")
    p.add_argument("--label_column", default="label")


def _test_size(text: str) -> float | int:
    try:
        return check_test_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def data_options(args) -> dict:
    """The dataset flags as `check_target` / `load_target` keywords (also read back from a run's metrics.json)."""
    get = args.get if isinstance(args, dict) else lambda k, d=None: getattr(args, k, d)
    # Runs recorded before the split defaults were chosen from the dataset named the roles' own splits.
    old = isinstance(args, dict) and "test_size" not in args
    return {
        "image_column": get("image_column", "image"),
        "label_column": get("label_column", "label"),
        "domain_column": get("domain_column"),
        "labeled_split": get("labeled_split", "labeled" if old else None),
        "unlabeled_split": get("unlabeled_split", "unlabeled" if old else None),
        "test_split": get("test_split", "test" if old else None),
        "test_size": get("test_size", DEFAULT_TEST_SIZE),
        "allow_test_overlap": get("allow_test_overlap", False),
        "dataset_config_name": get("dataset_config_name"),
        "seed": get("seed", 0),
    }


_data_options = data_options


def _setup_logging() -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    # One line per HTTP request otherwise (httpx logs each at INFO).
    for noisy in ("httpx", "httpcore", "urllib3", "huggingface_hub", "timm", "accelerate", "filelock", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
