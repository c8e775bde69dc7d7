"""`hf-mrl push DIR ORG/NAME`: push a finished run folder (reuser and student, with their cards)."""

from __future__ import annotations

import argparse
import sys

from hf_mrl.cli.args import HelpFormatter
from hf_mrl.hub.push import PushError, push_run


def push_main(argv=None, token: str | None = None) -> None:
    """`hf-mrl push DIR ORG/NAME`: push what DIR holds (reuser and/or student); the retry command of every push."""
    p = argparse.ArgumentParser(prog="hf-mrl push", description=push_main.__doc__, formatter_class=HelpFormatter)
    p.add_argument("output_dir", help="the --output_dir of a training run")
    p.add_argument("hub_model_id", help="ORG/NAME: the reuser goes there, the student to ORG/NAME-student")
    p.add_argument("--private", action="store_true", help="create the repos private")
    p.add_argument("--token", help="Hub token (default: HF_TOKEN or the one stored by `hf auth login`)")
    args = p.parse_args(argv)
    try:
        result = push_run(args.output_dir, args.hub_model_id, token=args.token or token, private=args.private or None)
    except (PushError, ValueError) as err:
        sys.exit(f"error: {err}")
    if result.reuser_repo_id:
        print(f"pushed the reuser to {result.reuser_repo_id}: {result.reuser_commit_url}")
    print(f"pushed the student to {result.student_repo_id}: {result.student_commit_url}")
