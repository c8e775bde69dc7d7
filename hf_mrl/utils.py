"""Small helpers shared by the library, its recipes and its tests."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["torch_threads"]


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run torch on `n` intra-op threads inside the block, then restore the previous count.

    Results can depend on the thread count (reduction order), and on a busy 2-core machine two OpenMP threads
    competing with another process made a tiny training step ~100x slower than one.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
