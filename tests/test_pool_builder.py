"""The Digits-LD pool builder: teachers must not depend on the caller's torch thread count."""

from __future__ import annotations

import torch

import hf_mrl.pool.builder as pool_builder


def test_teachers_train_on_fixed_threads_whatever_the_caller(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(pool_builder, "_build_teacher", lambda *a: seen.append(torch.get_num_threads()) or 0.0)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pool_builder.build_digits_pool(tmp_path, domains="U")
        assert torch.get_num_threads() == 1  # the caller's count comes back
    finally:
        torch.set_num_threads(before)
    assert seen == [pool_builder.TEACHER_THREADS] and pool_builder.TEACHER_THREADS != 1


def test_a_teacher_built_on_other_threads_is_not_reused():
    info = pool_builder._build_info("U", 0, torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    assert info["threads"] == pool_builder.TEACHER_THREADS
