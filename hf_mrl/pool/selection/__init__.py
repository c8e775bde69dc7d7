"""From a Hub search to a pool: discover candidate teachers, screen them, and select K for the target's domains.

Four steps, each cheap before the next costs more:

1. **discover**: `HfApi.list_models` (pipeline tag, search, filters, sorted by downloads) and/or a list of ids;
   every candidate is pinned to a commit.
2. **metadata screen** (no weights downloaded): model info, the card metadata and `config.json` decide label overlap
   with the target (the pool's own `map_labels`), library, safetensors, remote code, size and license; then a download
   budget.
3. **scored screen**: survivors are downloaded (concurrently, resumable, through huggingface_hub's cache) and loaded
   with `Teacher.load` (never pickle, never remote code); their outputs on the labeled set and an unlabeled sample
   (cached as in training) give accuracy, LEEP, confidence, and near-duplicates.
4. **selection**: a greedy choice of K maximising what routing could reach (`objective="samples"`: per labeled
   sample, the highest probability a chosen teacher gives its true class; `"clusters"`: per cluster of labeled
   samples, the accuracy of the best chosen teacher), with a penalty for teachers that agree with one already chosen
   on the unlabeled sample. The report gives the reachable accuracy (a sample counts when one chosen teacher gets it
   right) for every K, and each latent domain's (or cluster's) coverage by its best selected teacher.

It writes `pool.txt` (pinned `org/name@commit` lines, usable as `--pool`), `report.md`, `report.json` and
`reachable.png`. With `HF_HUB_OFFLINE=1` a rerun answers from the caches without a single Hub request.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from hf_mrl.pool.endpoint import EndpointOptions, is_endpoint
from hf_mrl.pool.labels import label_keys, load_label_map, normalize_label
from hf_mrl.pool.selection.discover import (  # noqa: F401
    _PICKLE,
    _WEIGHT_PATTERNS,
    SUPPORTED_LIBRARIES,
    Candidate,
    SelectionResult,
    _labels_from_config,
    _query_cache,
    discover_candidates,
)
from hf_mrl.pool.selection.greedy import (  # noqa: F401
    _kmeans,
    cluster_competence,
    greedy_select,
    group_coverage,
    unlabeled_coverage,
)
from hf_mrl.pool.selection.metadata import (  # noqa: F401
    _check_label_map,
    _metadata,
    _own_entries,
    _pool_label_map,
    _screen_one,
    _shared_entries,
    apply_download_budget,
    download_candidates,
    screen_metadata,
)
from hf_mrl.pool.selection.report import (  # noqa: F401
    _REASON_KIND,
    _fmt,
    _markdown,
    _plot,
    _plot_coverage,
    _short,
    write_outputs,
)
from hf_mrl.pool.selection.scoring import (  # noqa: F401
    _describe_permutation,
    _Outputs,
    _relabelling,
    permuted_among_peers,
    permuted_labels,
    score_candidates,
)
from hf_mrl.utils import cache_root

__all__ = [
    "Candidate",
    "SelectionResult",
    "discover_candidates",
    "screen_metadata",
    "apply_download_budget",
    "download_candidates",
    "score_candidates",
    "greedy_select",
    "group_coverage",
    "select_pool",
    "write_outputs",
    "main",
]


logger = logging.getLogger(__name__)


def select_pool(
    label_names: Sequence[str],
    labeled_images: torch.Tensor,
    labeled_labels: torch.Tensor,
    unlabeled_images: torch.Tensor,
    *,
    k: int = 3,
    output_dir: str | os.PathLike | None = None,
    candidates: Sequence[Candidate] | None = None,
    search: str | None = None,
    filters: Sequence[str] = (),
    author: str | None = None,
    pipeline_tag: str | None = "image-classification",
    max_candidates: int = 100,
    ids: Sequence[str] = (),
    use_search: bool = True,
    labeled_groups: torch.Tensor | None = None,
    group_names: Sequence[str] | None = None,
    unlabeled_groups: torch.Tensor | None = None,
    label_map: str | os.PathLike | dict | None = None,
    allow_remote_code: bool = False,
    max_parameters: int | None = 100_000_000,
    max_weight_bytes: int | None = None,
    min_covered: int = 1,
    download_budget_bytes: int | None = None,
    redundancy: float = 0.05,
    weak_threshold: float = 0.7,
    clusters: int | None = None,
    objective: str = "samples",
    check_permutations: bool = True,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    max_workers: int = 4,
    endpoint: EndpointOptions | None = None,
) -> SelectionResult:
    """Discover, screen and select K teachers for a target; writes the pool file and the report to `output_dir`.

    Args:
        label_names, labeled_images, labeled_labels, unlabeled_images: the target (uint8 images (N, 3, H, W)).
        k: how many teachers to select.
        candidates / search, filters, author, pipeline_tag, max_candidates, ids, use_search: see
            `discover_candidates` (`candidates` skips discovery).
        labeled_groups, group_names: latent domains of the labeled samples when known (evaluation data); otherwise
            the labeled samples are clustered (k-means on all kept candidates' outputs) into `clusters` groups.
        unlabeled_groups: latent domains of the unlabeled sample when known: each cluster of it is reported with
            its main domain.
        label_map: as `ModelPool` takes it (file or dict): the metadata screen's label overlap and the scored screen
            map labels with it; `label_map.json` in `output_dir` keeps the entries the selected pool needs.
        allow_remote_code, max_parameters, max_weight_bytes, min_covered: the metadata screen.
        download_budget_bytes: most bytes of weights to download (most downloaded candidates first).
        redundancy: weight of the agreement penalty in the greedy choice.
        weak_threshold: a group whose best selected teacher stays below it is reported as poorly covered.
        clusters: how many clusters the unlabeled sample (coverage report, `objective="coverage"`) and the labeled
            set (`objective="clusters"`) are cut into (default 2k).
        objective: "samples" (default), "clusters" or "coverage" (each cluster of the unlabeled sample needs a
            competent teacher, weighted by its size; `cluster_competence`).
        check_permutations: reject candidates whose labels look permuted (`permuted_labels`).
        seed: of the k-means clusterings.
        cache_dir: searches, metadata and teacher outputs (default `cache_root()/selection`).

    >>> result = select_pool(names, x_l, y_l, x_u, k=3, search="digits", output_dir="sel")  # doctest: +SKIP
    >>> result.pool_file.read_text().splitlines()[1]  # doctest: +SKIP
    'digits-lab/svhn-resnet-n000-s0@6f1c...'
    """
    start = time.perf_counter()
    if objective not in ("samples", "clusters", "coverage"):
        raise ValueError(f"objective must be 'samples', 'clusters' or 'coverage'; got {objective!r}.")
    if clusters is not None and (not isinstance(clusters, int) or clusters < 1):
        raise ValueError(f"clusters must be a positive integer; got {clusters!r}.")
    cache = Path(cache_dir or cache_root() / "selection")
    label_map = load_label_map(label_map)
    _check_label_map(label_map, label_names)
    if candidates is None:
        candidates = discover_candidates(
            search=search,
            filters=filters,
            author=author,
            pipeline_tag=pipeline_tag,
            max_candidates=max_candidates,
            ids=ids,
            use_search=use_search,
            cache_dir=cache,
            token=token,
        )
    candidates = list(candidates)
    if not candidates:
        raise ValueError("No candidate teachers: widen the search (--search, --filter) or pass --candidates_file.")
    called = [c for c in candidates if is_endpoint(c.id)]
    survivors = screen_metadata(
        [c for c in candidates if not is_endpoint(c.id)],
        label_names,
        allow_remote_code=allow_remote_code,
        max_parameters=max_parameters,
        max_weight_bytes=max_weight_bytes,
        min_covered=min_covered,
        label_map=label_map,
        cache_dir=cache,
        token=token,
    )
    survivors.sort(key=lambda c: -(c.downloads or 0))
    survivors = apply_download_budget(survivors, download_budget_bytes)
    downloads = download_candidates(survivors, token=token, max_workers=max_workers)
    kept, outs = score_candidates(
        survivors + called,
        label_names,
        labeled_images,
        labeled_labels,
        unlabeled_images,
        cache_dir=cache,
        label_map=label_map,
        check_permutations=check_permutations,
        token=token,
        endpoint=endpoint,
    )
    if not kept:
        raise ValueError("No candidate passed the screens: see the reasons in the report; widen the search.")
    y = labeled_labels
    domain_names = group_names  # the latent domains' names, before labeled clusters may take the place of domains
    hard = (outs.labeled.argmax(-1) == y[:, None]).float()  # (n, K)
    soft = outs.labeled[torch.arange(len(y)), :, y]  # (n, K) probability of the true class
    preds = outs.unlabeled.argmax(-1)  # (m, K)
    agreement = (preds[:, :, None] == preds[:, None, :]).float().mean(0)  # (K, K)
    # Routing sends a region of the input space to one teacher, so the objective asks for a competent teacher per
    # cluster of labeled samples (k-means on how all kept candidates see them), weighted by cluster size; with one
    # sample per cluster it is the oracle reachable accuracy, which many weak teachers inflate by luck.
    # The true-class probability only breaks ties between equally good teachers.
    n_clusters = min(clusters or 2 * k, len(y))
    cluster = _kmeans(outs.labeled.flatten(1), n_clusters, seed)  # (n,)
    members = torch.nn.functional.one_hot(cluster, n_clusters).float().T  # (G, n)
    sizes = members.sum(1)
    group_acc = (members @ (hard + 0.01 * soft)) / sizes.clamp_min(1)[:, None]  # (G, K)
    # Latent domains show in the unlabeled data, not in a few labels: each cluster of it needs a competent teacher.
    u_cluster, l_cluster, competence, labeled_acc = cluster_competence(
        outs.labeled, y, outs.unlabeled, clusters or 2 * k, seed=seed
    )
    u_sizes = torch.bincount(u_cluster, minlength=competence.shape[0]).float()
    if objective == "clusters":
        chosen, _ = greedy_select(group_acc[sizes > 0], k, agreement, redundancy, sizes[sizes > 0])
    elif objective == "coverage":
        chosen, _ = greedy_select(competence[u_sizes > 0], k, agreement, redundancy, u_sizes[u_sizes > 0])
    else:
        # The probability a teacher gives the true class: a weak teacher right by luck adds little.
        chosen, _ = greedy_select(soft, k, agreement, redundancy)
    curve = [hard[:, chosen[: i + 1]].max(1).values.mean().item() for i in range(len(chosen))]
    exact = (members @ hard) / sizes.clamp_min(1)[:, None]  # (G, K) hard accuracy per cluster
    routed = [(sizes @ exact[:, chosen[: i + 1]].max(1).values).item() / len(y) for i in range(len(chosen))]
    for rank, j in enumerate(chosen, start=1):
        kept[j].status, kept[j].rank = "selected", rank
    if labeled_groups is None:
        labeled_groups, group_names = cluster, [f"cluster {g}" for g in range(n_clusters)]
    elif group_names is None:
        group_names = [str(g) for g in range(int(labeled_groups.max()) + 1)]
    groups = group_coverage(hard, chosen, labeled_groups, group_names)
    for g in groups.values():
        g["weak"] = g["teacher"] < weak_threshold
    covered = unlabeled_coverage(
        competence,
        labeled_acc,
        u_cluster,
        l_cluster,
        chosen,
        [c.id for c in kept],
        unlabeled_groups,
        domain_names,
        weak_threshold,
    )
    result = SelectionResult(
        candidates, [kept[j] for j in chosen], curve, groups, downloads, time.perf_counter() - start, routed
    )
    result.clusters = covered
    result.coverage_matrix = competence[:, chosen].tolist()
    result.label_map = _selected_label_map(label_map, result.selected)
    if output_dir is not None:
        write_outputs(result, output_dir, weak_threshold=weak_threshold)
    return result


def _selected_label_map(label_map: dict | None, selected: Sequence[Candidate]) -> dict | None:
    """The label map for training the selected pool: a training `ModelPool` rejects entries for teachers it lacks
    and shared names none of its teachers knows, so keep only what the selected teachers use (keyed by pinned id)."""
    if not label_map:
        return None
    known = set().union(*(label_keys(c.labels or []) for c in selected))
    out: dict = {}
    for target, names in _shared_entries(label_map).items():
        mine = [n for n in names if normalize_label(n) in known]
        if mine or not names:
            out[target] = mine
    for c in selected:
        own = _own_entries(label_map, c)
        if own:
            out[c.id] = own
    return out or None
