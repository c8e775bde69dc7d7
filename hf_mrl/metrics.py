"""Accuracy overall, per latent domain (when evaluation data carry domain labels) and worst domain."""

from __future__ import annotations

import torch

__all__ = ["accuracy_report"]


def accuracy_report(
    predictions: torch.Tensor,
    references: torch.Tensor,
    domains: torch.Tensor | None = None,
    domain_names: list[str] | None = None,
) -> dict:
    """`{"accuracy", "per_domain": {name: acc}, "worst_domain_accuracy"}` (the last two only with domains)."""
    predictions, references = torch.as_tensor(predictions), torch.as_tensor(references)
    if predictions.shape != references.shape:
        raise ValueError(f"{predictions.shape[0]} predictions for {references.shape[0]} references.")
    correct = (predictions == references).float()
    report = {"accuracy": correct.mean().item() if len(correct) else float("nan")}
    if domains is not None and (torch.as_tensor(domains) >= 0).any():
        domains = torch.as_tensor(domains)
        per = {}
        for d in sorted(set(domains.tolist()) - {-1}):
            name = domain_names[d] if domain_names and d < len(domain_names) else str(d)
            per[name] = correct[domains == d].mean().item()
        report["per_domain"] = per
        report["worst_domain_accuracy"] = min(per.values())
    return report
