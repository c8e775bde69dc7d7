"""`hf-mrl select`: discover, screen and select K teachers from a Hub search (see `hf_mrl.pool.selection`)."""

from __future__ import annotations

import argparse
import logging
import sys

import torch

import hf_mrl.pool.selection as selection
from hf_mrl.cli.args import HelpFormatter, _show_defaults, add_data_arguments, data_options
from hf_mrl.pool.endpoint import add_endpoint_arguments, endpoint_options
from hf_mrl.pool.selection import select_pool


def _parse_size(text: str | None) -> int | None:
    if text is None:
        return None
    units = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    t = text.strip().upper().removesuffix("B")
    unit = t[-1] if t and t[-1] in units else ""
    try:
        return int(float(t[: len(t) - len(unit)]) * units[unit])
    except ValueError:
        raise ValueError(
            f"Invalid size {text!r}: expected a number with an optional K/M/G unit (e.g. 500M)."
        ) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hf-mrl select", description=selection.__doc__.splitlines()[0], formatter_class=HelpFormatter
    )
    p.add_argument("--output_dir", required=True, help="writes pool.txt, report.md, report.json, reachable.png")
    p.add_argument("--k", type=int, default=3, help="how many teachers to select")
    add_data_arguments(p, dataset_default="digits-ld")  # the same data flags as `hf-mrl train`, carved the same way
    p.add_argument("--unlabeled_sample", type=int, default=2000, help="unlabeled samples scored per candidate")
    p.add_argument("--search", default=None, help="Hub search term (model id substring)")
    p.add_argument("--filter", action="append", default=[], help="Hub filter tag, e.g. a library (repeatable)")
    p.add_argument("--author", default=None)
    p.add_argument("--pipeline_tag", default="image-classification")
    p.add_argument("--max_candidates", type=int, default=100, help="most candidates from the search, by downloads")
    p.add_argument("--candidates_file", default=None, help="ids to consider, one `org/name[@rev]` a line")
    p.add_argument("--no_search", action="store_true", help="only the ids of --candidates_file")
    p.add_argument("--allow_remote_code", action="store_true", help="do not reject `auto_map` repos at metadata")
    p.add_argument("--max_parameters", type=int, default=100_000_000)
    p.add_argument("--max_weight_size", default=None, help="per candidate, e.g. 500M")
    p.add_argument("--min_covered", type=int, default=1, help="fewest target classes a candidate must know")
    p.add_argument("--download_budget", default=None, help="total weights to download, e.g. 2G")
    p.add_argument("--redundancy", type=float, default=0.05)
    p.add_argument("--weak_threshold", type=float, default=0.7)
    p.add_argument(
        "--clusters",
        type=int,
        default=None,
        help="clusters of the unlabeled sample whose coverage the report shows (and of the labeled set for "
        "--objective clusters); default 2k",
    )
    p.add_argument(
        "--objective",
        choices=["samples", "clusters", "coverage"],
        default="samples",
        help="greedy objective: best true-class probability per labeled sample (samples), best teacher per "
        "cluster of labeled samples (clusters), or a competent teacher per cluster of the unlabeled sample (coverage)",
    )
    p.add_argument(
        "--label_map",
        default=None,
        help="JSON label map as train_mrl.py takes it ({target label: [teacher labels]} and/or {teacher id: {...}}): "
        "candidates whose labels differ by name are matched with it; label_map.json keeps the selected pool's part",
    )
    p.add_argument(
        "--keep_permuted",
        action="store_true",
        help="do not reject candidates whose labels look permuted (on the labeled set or against other candidates)",
    )
    p.add_argument("--cache_dir", default=None, help="searches, metadata, teacher outputs")
    p.add_argument("--max_workers", type=int, default=4, help="concurrent downloads")
    add_endpoint_arguments(p)
    _show_defaults(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """`hf-mrl select`: discover, screen and select K teachers; prints where the pool file and report are."""
    from hf_mrl.data.target import load_target
    from hf_mrl.pool.model_pool import parse_pool_file
    from hf_mrl.utils import torch_threads

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpx2", "httpcore"):  # one line per HTTP request otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.no_search and not args.candidates_file:
        raise ValueError("--no_search needs --candidates_file: there would be no candidate.")
    if args.clusters is not None and args.clusters < 1:
        raise ValueError(f"--clusters must be at least 1; got {args.clusters}.")
    from hf_mrl.pool.labels import load_label_map

    label_map = load_label_map(args.label_map)  # a bad file fails here, before the target is loaded
    ids = parse_pool_file(args.candidates_file) if args.candidates_file else []
    try:
        target, described = load_target(args.dataset, args.labeled_per_class, **data_options(args))
    except ValueError as err:  # bad data input: one line, as `hf-mrl train` says it
        sys.exit("error: " + " ".join(str(err).split()))
    gen = torch.Generator().manual_seed(args.seed)
    sample = torch.randperm(len(target.unlabeled_images), generator=gen)[: args.unlabeled_sample]
    with torch_threads(min(torch.get_num_threads(), 2)):
        result = select_pool(
            target.label_names,
            target.labeled_images,
            target.labeled_labels,
            target.unlabeled_images[sample],
            k=args.k,
            output_dir=args.output_dir,
            search=args.search,
            filters=args.filter,
            author=args.author,
            pipeline_tag=args.pipeline_tag or None,
            max_candidates=args.max_candidates,
            ids=ids,
            use_search=not args.no_search,
            labeled_groups=target.labeled_domains,
            group_names=target.domain_names,
            unlabeled_groups=None if target.unlabeled_domains is None else target.unlabeled_domains[sample],
            label_map=label_map,
            check_permutations=not args.keep_permuted,
            seed=args.seed,
            allow_remote_code=args.allow_remote_code,
            max_parameters=args.max_parameters,
            max_weight_bytes=_parse_size(args.max_weight_size),
            min_covered=args.min_covered,
            download_budget_bytes=_parse_size(args.download_budget),
            redundancy=args.redundancy,
            weak_threshold=args.weak_threshold,
            clusters=args.clusters,
            objective=args.objective,
            cache_dir=args.cache_dir,
            max_workers=args.max_workers,
            endpoint=endpoint_options(args),
        )
    print(f"Target: {described}")
    print(f"Selected {len(result.selected)}: " + ", ".join(c.id for c in result.selected))
    print("Reachable accuracy by K: " + ", ".join(f"{a:.3f}" for a in result.curve))
    print(f"{result.weight_downloads} weight downloads, {result.seconds:.1f} s")
    print(f"Pool file: {result.pool_file}\nReport: {result.report_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
