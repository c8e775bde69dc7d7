"""Latent-domain accuracy: overall accuracy, accuracy per latent domain and the worst domain's accuracy.

An `evaluate` metric module shipped inside hf_mrl. `evaluate.load("accuracy")` fetches its script from the Hub,
which fails offline; this one is loaded by path:

    >>> import evaluate
    >>> from hf_mrl.metrics import METRIC_PATH
    >>> metric = evaluate.load(METRIC_PATH)  # doctest: +SKIP

The script is self-contained (evaluate copies it into its modules cache and imports it from there).
"""

from __future__ import annotations

import datasets
import evaluate
import numpy as np

_CITATION = """\
@inproceedings{shao2021mrl,
  title     = {Towards Robust Model Reuse in the Presence of Latent Domains},
  author    = {Shao, Jie-Jing and Cheng, Zhanzhan and Li, Yu-Feng and Pu, Shiliang},
  booktitle = {Proceedings of the Thirtieth International Joint Conference on Artificial Intelligence (IJCAI)},
  year      = {2021}
}
"""

_DESCRIPTION = """\
Accuracy of a classifier on data drawn from several latent domains. With domain labels (used for evaluation only),
it also reports the accuracy on each domain and the worst of them: a model that is good on average can still fail
one domain, and the worst-domain accuracy shows it. Samples whose domain is -1 (unknown) count towards the overall
accuracy only.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted class indices.
    references (`list` of `int`): true class indices.
    domains (`list` of `int`, *optional*): the latent domain of each sample (-1: unknown); pass it to `compute`.
    domain_names (`list` of `str`, *optional*): names of the domain indices, used as keys of the result.

Returns:
    accuracy (`float`): the fraction of correct predictions (NaN with no sample).
    per_domain_accuracy (`dict[str, float]`): accuracy on each domain (only with `domains`).
    domain_counts (`dict[str, int]`): the number of samples of each domain (only with `domains`).
    worst_domain_accuracy (`float`): the lowest per-domain accuracy (only with `domains`).
    worst_domain (`str`): the domain with that accuracy (only with `domains`).

Examples:
    >>> metric = evaluate.load("path/to/latent_domain_accuracy")  # doctest: +SKIP
    >>> metric.compute(predictions=[0, 1, 1, 0], references=[0, 1, 0, 0], domains=[0, 0, 1, 1],
    ...                domain_names=["photo", "sketch"])  # doctest: +SKIP
    {'accuracy': 0.75, 'per_domain_accuracy': {'photo': 1.0, 'sketch': 0.5}, 'domain_counts': {'photo': 2,
     'sketch': 2}, 'worst_domain_accuracy': 0.5, 'worst_domain': 'sketch'}
"""


def latent_domain_accuracy(predictions, references, domains=None, domain_names=None) -> dict:
    """The metric itself, usable without `evaluate` (same arguments and result as `compute`)."""
    predictions, references = np.asarray(predictions), np.asarray(references)
    if predictions.shape != references.shape:
        raise ValueError(f"{predictions.shape[0]} predictions for {references.shape[0]} references.")
    correct = (predictions == references).astype(np.float64)
    result = {"accuracy": float(correct.mean()) if correct.size else float("nan")}
    if domains is None:
        return result
    domains = np.asarray(domains)
    if domains.shape != references.shape:
        raise ValueError(f"{domains.shape[0]} domain labels for {references.shape[0]} references.")
    known = sorted(int(d) for d in set(domains.tolist()) if d >= 0)
    if not known:
        return result
    names = list(domain_names or [])

    def name(d: int) -> str:
        return str(names[d]) if d < len(names) else str(d)

    per = {name(d): float(correct[domains == d].mean()) for d in known}
    result["per_domain_accuracy"] = per
    result["domain_counts"] = {name(d): int((domains == d).sum()) for d in known}
    worst = min(per, key=per.get)
    result["worst_domain_accuracy"] = per[worst]
    result["worst_domain"] = worst
    return result


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class LatentDomainAccuracy(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            # `domains` and `domain_names` are arguments of `compute`, not features: a metric's input formats must
            # share their column names, and most callers have no domain labels.
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, domains=None, domain_names=None) -> dict:
        return latent_domain_accuracy(predictions, references, domains, domain_names)
