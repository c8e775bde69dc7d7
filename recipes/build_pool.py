"""Build the Digits-LD teacher pool: one teacher per domain, saved as Hub-format model repositories.

    python recipes/build_pool.py [--output_dir DIR] [--domains MUS]

Prints the pool file (`hub-ids.txt`) to pass to `recipes/train_mrl.py --pool`. Cached: a second run
reuses the teachers that exist.
"""

import argparse
import logging

from hf_mrl.pool.builder import build_digits_pool, default_pool_dir


def main(argv=None) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", default=None, help=f"default: {default_pool_dir()}")
    p.add_argument("--domains", default="MUS", help="which Digits-LD domains get a teacher")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    print(build_digits_pool(args.output_dir, args.domains, args.seed))


if __name__ == "__main__":
    main()
