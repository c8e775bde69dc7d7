"""Train an MRL student (and the supervised-only baseline on the same split and budget).

    accelerate launch recipes/train_mrl.py --pool hub-ids.txt --output_dir runs/mus
    python recipes/train_mrl.py --output_dir runs/mus          # the embedded Digits-LD default
    python recipes/train_mrl.py --method mr-cr --output_dir runs/mus-cr   # a baseline method instead of MRL

Writes DIR/reuser/, DIR/student/ (config.json + model.safetensors + README.md) and DIR/metrics.json. A --method other
than mrl trains no attention reuser: it writes DIR/student/ and DIR/metrics.json only. Methods that need no teachers
(supervised, pl, mean-teacher, vat, fixmatch) never load the pool. The same command is installed as `hf-mrl train`.

What it does, from Python (see `hf_mrl.cli.main.train` for the whole of it):

    from hf_mrl import ModelPool, MRLConfig, ReuseArguments, ReuseTrainer
    from hf_mrl.data.target import load_target

    data, description = load_target("digits-ld:MUS", labeled_per_class=10, seed=0)
    pool = ModelPool.from_file("hub-ids.txt", data.label_names)
    result = ReuseTrainer(pool, data, MRLConfig(max_steps=1000), ReuseArguments(guard_folds=3)).train()
    result.save_pretrained("runs/mus")          # reuser/, student/, metrics.json, with model cards
    result.push_to_hub("me/mus-mrl")            # the reuser to me/mus-mrl, the student to me/mus-mrl-student
"""

from hf_mrl.cli.main import parse_train_args, preflight, train, train_main

__all__ = ["main", "parse_args", "preflight", "train"]

parse_args = parse_train_args


def main(argv=None) -> None:
    train_main(argv)


if __name__ == "__main__":
    main()
