"""What `hf-mrl select` writes: the pool file, the label map, report.md / report.json and the plots."""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from hf_mrl.pool.selection.discover import SelectionResult
from hf_mrl.utils import atomic_write_json, atomic_write_text


def write_outputs(result: SelectionResult, output_dir: str | os.PathLike, weak_threshold: float = 0.7) -> None:
    out = Path(output_dir)
    lines = ["# Teachers selected by hf_mrl.pool.selection, pinned to the commits that were screened"]
    if result.label_map:
        atomic_write_json(out / "label_map.json", result.label_map)
        lines.append("# their labels were matched with label_map.json: train with --label_map label_map.json")
    for c in result.selected:
        lines.append(f"{c.id}  # accuracy {c.scores['accuracy']:.3f}, LEEP {c.scores['leep']:.3f}")
    result.pool_file = atomic_write_text(out / "pool.txt", "\n".join(lines) + "\n")
    _plot(result.curve, result.routed_curve, out / "reachable.png")
    if result.clusters and result.selected:
        _plot_coverage(result, out / "coverage.png", weak_threshold)
    atomic_write_json(
        out / "report.json",
        {
            "selected": [c.id for c in result.selected],
            "reachable_accuracy": result.curve,
            "reachable_one_teacher_per_cluster": result.routed_curve,
            "groups": result.groups,
            "unlabeled_clusters": result.clusters,
            "label_map": result.label_map,
            "weight_downloads": result.weight_downloads,
            "seconds": result.seconds,
            "candidates": [c.to_dict() for c in result.candidates],
        },
    )
    result.report_file = atomic_write_text(out / "report.md", _markdown(result, weak_threshold))


def _plot(curve: list[float], routed: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot(range(1, len(curve) + 1), curve, marker="o", label="oracle: any teacher right")
    if routed:
        ax.plot(range(1, len(routed) + 1), routed, marker="s", label="one teacher per cluster")
    ax.set_xlabel("K (teachers selected)")
    ax.set_ylabel("reachable accuracy (labeled set)")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_coverage(result: SelectionResult, path: Path, weak_threshold: float) -> None:
    """Heat map: competence of each selected teacher on each cluster of the unlabeled sample."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [result.coverage_matrix[e["cluster"]] for e in result.clusters]
    labels = [
        f"{e['cluster']} ({e['share']:.0%}{', ' + e['domain'] if 'domain' in e else ''})"
        + (" weak" if e["weak"] else "")
        for e in result.clusters
    ]
    fig, ax = plt.subplots(figsize=(1.6 + 0.9 * len(result.selected), 1.0 + 0.32 * len(rows)))
    im = ax.imshow(torch.tensor(rows).numpy(), vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for i, row in enumerate(rows):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="w" if v < 0.6 else "k")
    ax.set_xticks(range(len(result.selected)), [f"#{c.rank} {c.repo_id.split('/')[-1]}" for c in result.selected])
    ax.tick_params(axis="x", labelrotation=30, labelsize=6)
    ax.set_yticks(range(len(rows)), labels, fontsize=6)
    ax.set_title(f"competence per cluster of the unlabeled sample (weak: all < {weak_threshold:.2f})", fontsize=7)
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


_REASON_KIND = re.compile(r":| \(| of ")


def _short(cid: str | None) -> str:
    return "" if cid is None else cid.split("@")[0]


def _fmt(v) -> str:
    return "" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def _markdown(result: SelectionResult, weak_threshold: float) -> str:
    n_rej = sum(c.status == "rejected" for c in result.candidates)
    lines = [
        "# Teacher selection report",
        "",
        f"{len(result.candidates)} candidates, {n_rej} rejected, {len(result.selected)} selected; "
        f"{result.weight_downloads} weight downloads; {result.seconds:.1f} s.",
        "",
        "Reachable accuracy (a labeled sample counts when one selected teacher gets it right) after each pick: "
        + ", ".join(f"K={i + 1}: {a:.3f}" for i, a in enumerate(result.curve))
        + "; with one teacher per cluster of labeled samples: "
        + ", ".join(f"K={i + 1}: {a:.3f}" for i, a in enumerate(result.routed_curve))
        + " (`reachable.png`).",
        "",
        "## Coverage per group",
        "",
        "A group is covered when one selected teacher is competent on it (routing picks a teacher per region of "
        "the input space, not per sample). `oracle reach` counts a sample when any selected teacher is right.",
        "",
        "| group | samples | best selected teacher | oracle reach | best candidate found | |",
        "|---|---|---|---|---|---|",
    ]
    for name, g in result.groups.items():
        note = f"**weak: below {weak_threshold:.2f}**" if g["weak"] else ""
        lines.append(
            f"| {name} | {g['samples']} | {g['teacher']:.3f} | {g['reach']:.3f} | {g['best_candidate']:.3f} | {note} |"
        )
    weak = [n for n, g in result.groups.items() if g["weak"]]
    none_found = [n for n in weak if result.groups[n]["best_candidate"] < weak_threshold]
    if weak:
        lines += [
            "",
            f"**Poorly covered: {', '.join(weak)}.** No selected teacher is competent there, so MRL cannot route those "
            "samples to a good teacher and the student learns them mostly from their labels.",
        ]
        if none_found:
            lines.append(
                f"No candidate found is competent on {', '.join(none_found)} either: search for teachers of that "
                "domain (other --search terms or --filter tags, a larger --max_candidates), label more samples of it, "
                "or fine-tune a teacher on its labeled samples and add it with --candidates_file. See docs/selection.md."
            )
        else:
            lines.append("A competent candidate exists but was not selected: raise --k or lower --redundancy.")
    if result.clusters:
        lines += [
            "",
            "## Coverage of the unlabeled data's clusters",
            "",
            "The unlabeled sample, clustered by how sure each kept candidate is of it (a latent domain shows as a "
            "group of samples the same teachers are sure of). *Competence*: a teacher's accuracy on the cluster's "
            "labeled samples, shrunk towards its labeled-set accuracy at the confidence it shows on the cluster's "
            "unlabeled samples (`coverage.png`).",
            "",
            "| cluster | unlabeled samples | main domain | labeled samples | most competent selected teacher "
            "| competence | its labeled accuracy | best candidate found | its competence | |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for e in result.clusters:
            note = f"**weak: below {weak_threshold:.2f}**" if e["weak"] else ""
            lines.append(
                f"| {e['cluster']} | {e['samples']} ({e['share']:.0%}) | {e.get('domain', '')} | {e['labeled']} "
                f"| {_short(e['teacher'])} | {e['competence']:.3f} | {_fmt(e['labeled_accuracy'])} "
                f"| {_short(e['best_candidate'])} | {e['best_candidate_competence']:.3f} | {note} |"
            )
        weak = [e for e in result.clusters if e["weak"]]
        if weak:
            share = sum(e["share"] for e in weak)
            lines += [
                "",
                f"**{len(weak)} cluster(s) of the unlabeled data ({share:.0%} of it) have no competent selected "
                "teacher**"
                + (": main domains " + ", ".join(e["domain"] for e in weak) if "domain" in weak[0] else "")
                + ". See docs/selection.md, *When a domain is poorly covered*.",
            ]
    rejected: dict[str, int] = {}
    for c in result.candidates:
        if c.status == "rejected":
            key = f"{c.stage}: {_REASON_KIND.split(c.reason)[0]}"  # the kind of reason, without its details
            rejected[key] = rejected.get(key, 0) + 1
    if rejected:
        lines += ["", "Rejected: " + "; ".join(f"{n} {k}" for k, n in sorted(rejected.items(), key=lambda i: -i[1]))]
    lines += [
        "",
        "## Candidates",
        "",
        "| candidate | status | reason | downloads | library | license | accuracy | LEEP | confidence | flags |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = {"selected": 0, "kept": 1, "rejected": 2}
    for c in sorted(result.candidates, key=lambda c: (order[c.status], c.rank or 0, -(c.scores.get("accuracy") or 0))):
        status = f"selected #{c.rank}" if c.status == "selected" else c.status
        reason = f"{c.stage}: {c.reason}" if c.reason else ""
        reason = reason.replace("|", "/").replace("\n", " ")
        s = c.scores
        lines.append(
            f"| {c.id} | {status} | {reason} | {_fmt(c.downloads)} | {_fmt(c.library)} | {_fmt(c.license)} "
            f"| {_fmt(s.get('accuracy'))} | {_fmt(s.get('leep'))} | {_fmt(s.get('confidence'))} "
            f"| {'; '.join(c.flags).replace('|', '/')} |"
        )
    return "\n".join(lines) + "\n"
