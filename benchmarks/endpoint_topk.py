"""What top-k answers cost: MRL on Digits-LD MUS with its teachers served as endpoints at k = 1, 3, 5 and every
label, against the same teachers run locally.

Each Digits-LD teacher is served by `hf_mrl.testing.LocalEndpoint` (a `transformers.pipeline("image-classification")`
of its checkpoint behind the Inference API protocol, on 127.0.0.1) and called through `huggingface_hub.InferenceClient`
like any endpoint. Every image is asked once, for every label; the k = 5, 3, 1 runs are served from the answer store,
which keeps the top k of a stored answer: exactly what a server asked for `top_k=k` answers (the pipeline's top k of
the same softmax). The local runs go through `ModelPool` as usual (the teachers' own preprocessing on uint8
tensors; the endpoint decodes a PNG of the same pixels through its pipeline's processor).

    python benchmarks/endpoint_topk.py --seeds 0 1 2 --out results/endpoints

writes `topk.json` and `topk.md` there (mean and spread over seeds of the reuser's and the student's test accuracy,
and of the answers' observed mass). Guard off and no supervised baseline: the comparison is between pools.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

SETTINGS = ("local", "all", "5", "3", "1")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    p.add_argument("--max_steps", type=int, default=1000)
    p.add_argument("--out", default="results/endpoints")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    from hf_mrl import ModelPool, MRLConfig, ReuseArguments, ReuseTrainer
    from hf_mrl.data.target import load_target
    from hf_mrl.pool.builder import build_digits_pool
    from hf_mrl.pool.endpoint import EndpointOptions
    from hf_mrl.pool.model_pool import parse_pool_file
    from hf_mrl.testing import LocalEndpoint

    torch.set_num_threads(args.threads)
    pool_file = build_digits_pool()
    folders = parse_pool_file(pool_file)
    names = {f"t{i}": f for i, f in enumerate(folders)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as cache, LocalEndpoint(names) as server:
        lines = [f"endpoint:{server.url_for(n)}" for n in names]
        for seed in args.seeds:
            data, description = load_target("digits-ld:MUS", labeled_per_class=10, seed=seed)
            for setting in args.settings:
                start, calls = time.perf_counter(), server.calls
                if setting == "local":
                    pool = ModelPool(folders, data.label_names, cache_dir=Path(cache) / "local")
                else:
                    top_k = None if setting == "all" else int(setting)
                    opts = EndpointOptions(top_k=top_k, concurrency=4)
                    pool = ModelPool(lines, data.label_names, cache_dir=Path(cache) / "answers", endpoint=opts)
                    if setting != "all" and "all" not in args.settings:
                        raise SystemExit("k < all is served from the every-label answers: keep `all` in --settings")
                config = MRLConfig(max_steps=args.max_steps, seed=seed)
                run = ReuseArguments(guard_folds=0, supervised_baseline=False, progress=False)
                result = ReuseTrainer(pool, data, config, run).train()
                m = result.metrics
                stats = pool.endpoint_stats()
                observed = None
                if stats:
                    masses = [t["observed_mass"] for t in stats["teachers"].values() if t["observed_mass"] is not None]
                    observed = sum(masses) / len(masses) if masses else None
                rows.append(
                    {
                        "seed": seed,
                        "setting": setting,
                        "reuse_accuracy": m.reuser_accuracy,  # this record's key: the committed records use it
                        "student_accuracy": m["student_accuracy"],
                        "teacher_accuracy": list(m["teacher_accuracy"].values()),
                        "observed_mass": observed,
                        "calls": server.calls - calls,
                        "seconds": round(time.perf_counter() - start, 1),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    table = _table(rows, args.settings)
    (out / "topk.json").write_text(json.dumps({"description": description, "rows": rows}, indent=2))
    (out / "topk.md").write_text(table)
    print(table)
    return 0


def _spread(values) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    mean = 100 * statistics.mean(values)
    sd = 100 * statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.1f} ± {sd:.1f}"


def _table(rows: list[dict], settings) -> str:
    lines = [
        "| teachers | reuser (test %) | student (test %) | mean teacher alone (test %) | observed mass | calls |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in settings:
        mine = [r for r in rows if r["setting"] == s]
        name = "local" if s == "local" else ("endpoint, every label" if s == "all" else f"endpoint, top {s}")
        teachers = [sum(r["teacher_accuracy"]) / len(r["teacher_accuracy"]) for r in mine]
        lines.append(
            f"| {name} | {_spread([r['reuse_accuracy'] for r in mine])} | {_spread([r['student_accuracy'] for r in mine])}"
            f" | {_spread(teachers)} | {_spread([r['observed_mass'] for r in mine])} | {sum(r['calls'] for r in mine)} |"
        )
    seeds = sorted({r["seed"] for r in rows})
    return "\n".join(lines) + f"\n\nMean ± sd over seeds {seeds}; observed mass in % of probability.\n"


if __name__ == "__main__":
    sys.exit(main())
