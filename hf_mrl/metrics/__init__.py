"""Accuracy overall, per latent domain (when evaluation data carry domain labels) and worst domain.

The computation lives in an `evaluate` metric module shipped with the package
(`hf_mrl/metrics/latent_domain_accuracy/`), loaded by path so that it works offline:

>>> import evaluate
>>> metric = evaluate.load(METRIC_PATH)  # doctest: +SKIP
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

__all__ = ["METRIC_PATH", "accuracy_report", "load_metric"]

METRIC_PATH = str(Path(__file__).resolve().parent / "latent_domain_accuracy")


@functools.lru_cache(maxsize=1)
def load_metric():
    """The `latent_domain_accuracy` evaluate module, loaded from the installed package (no Hub access)."""
    import evaluate

    # keep_in_memory: no Arrow cache files, so concurrent processes cannot collide on them.
    return evaluate.load(METRIC_PATH, keep_in_memory=True)


def accuracy_report(
    predictions: torch.Tensor,
    references: torch.Tensor,
    domains: torch.Tensor | None = None,
    domain_names: list[str] | None = None,
) -> dict:
    """`{"accuracy", "per_domain": {name: acc}, "worst_domain_accuracy", "worst_domain"}` (the last three with domains).

    Computed by the `latent_domain_accuracy` evaluate module; samples of domain -1 count only towards `accuracy`.
    """
    predictions = torch.as_tensor(predictions).reshape(-1)
    references = torch.as_tensor(references).reshape(-1)
    if predictions.shape != references.shape:
        raise ValueError(f"{predictions.shape[0]} predictions for {references.shape[0]} references.")
    if len(references) == 0:
        return {"accuracy": float("nan")}
    inputs = {"predictions": predictions.tolist(), "references": references.tolist()}
    if domains is not None and (torch.as_tensor(domains) >= 0).any():
        inputs["domains"] = torch.as_tensor(domains).reshape(-1).tolist()
    result = load_metric().compute(**inputs, domain_names=list(domain_names) if domain_names else None)
    report = {"accuracy": result["accuracy"]}
    if "per_domain_accuracy" in result:
        report["per_domain"] = result["per_domain_accuracy"]
        report["worst_domain_accuracy"] = result["worst_domain_accuracy"]
        report["worst_domain"] = result["worst_domain"]
    return report
