"""The attention reuser: one prototype per teacher, per-instance weights, a weighted teacher ensemble."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import torch
import torch.nn as nn
from huggingface_hub import PyTorchModelHubMixin, hf_hub_download
from safetensors.torch import load_model

from .cards import RunSummary, reuser_card, split_teacher_id
from .embedding import Embedding
from .pool import ModelPool

__all__ = ["AttentionReuser", "FORMAT_VERSION"]

FORMAT_VERSION = 1

logger = logging.getLogger(__name__)


class AttentionReuser(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="hf_mrl",
    tags=["hf_mrl", "model-reuse", "attention-reuse", "image-classification"],
    repo_url="https://github.com/hf-mrl/hf_mrl",
    pipeline_tag="image-classification",
):
    """Weights K frozen teachers per instance: `a(x) = softmax(P psi(x) / tau + b)`, `R(x) = a(x)^T H(x)`.

    Args:
        teachers: the pool's teacher ids (`org/name@commit` or local paths), in pool order.
        label_names: the target class names, in class-index order.
        embed_dim: the dimension p of psi(x).
        embedding: the embedding spec (see `hf_mrl.embedding`).
        temperature: tau; defaults to sqrt(p), the usual scale of a dot-product attention.
        use_bias: a per-teacher bias b, a global prior that lets the router prefer one teacher everywhere.
        format_version: the config format; loading a newer one than this library knows fails clearly.

    >>> reuser = AttentionReuser(["org/a@1", "org/b@2"], ["0", "1"], embed_dim=4)
    >>> out = reuser(torch.randn(3, 4), torch.softmax(torch.randn(3, 2, 2), -1))
    >>> out["weights"].shape, out["probs"].shape
    (torch.Size([3, 2]), torch.Size([3, 2]))
    """

    def __init__(
        self,
        teachers: list[str],
        label_names: list[str],
        embed_dim: int,
        embedding: dict | None = None,
        temperature: float | None = None,
        use_bias: bool = True,
        format_version: int = FORMAT_VERSION,
    ):
        super().__init__()
        if format_version > FORMAT_VERSION:
            raise ValueError(
                f"This reuser was saved with format version {format_version}, newer than this hf_mrl "
                f"understands ({FORMAT_VERSION}): upgrade hf_mrl."
            )
        if not teachers:
            raise ValueError("An AttentionReuser needs at least one teacher.")
        if embed_dim < 1:
            raise ValueError(f"embed_dim must be >= 1; got {embed_dim}.")
        self.teachers = list(teachers)
        self.label_names = [str(n) for n in label_names]
        self.embedding_spec = Embedding(embedding or "teacher-outputs").spec
        self.temperature = float(temperature) if temperature else math.sqrt(embed_dim)
        if isinstance(self._hub_mixin_config, dict):  # record resolved values (config.json, card), not None
            self._hub_mixin_config.update(embedding=self.embedding_spec, temperature=self.temperature)
        k = len(self.teachers)
        self.prototypes = nn.Parameter(torch.zeros(k, embed_dim))  # (K, p)
        self.bias = nn.Parameter(torch.zeros(k), requires_grad=use_bias)  # (K,)
        self.register_buffer("psi_mean", torch.zeros(embed_dim))
        self.register_buffer("psi_std", torch.ones(embed_dim))
        self.card_summary: RunSummary | None = None  # filled after training; rendered into the model card
        self._load_kwargs: dict = {}  # how to fetch the teachers (a token), never saved
        self._pool: ModelPool | None = None
        self._embedding: Embedding | None = None

    @property
    def num_teachers(self) -> int:
        return self.prototypes.shape[0]

    @property
    def embed_dim(self) -> int:
        return self.prototypes.shape[1]

    def standardize(self, features: torch.Tensor) -> torch.Tensor:
        if features.shape[-1] != self.embed_dim:
            raise ValueError(f"Embedding has {features.shape[-1]} features; this reuser expects {self.embed_dim}.")
        return (features - self.psi_mean) / self.psi_std

    @torch.no_grad()
    def fit_standardizer(self, features: torch.Tensor) -> None:
        """Set the psi standardisation from (unlabeled) target features (N, p)."""
        self.psi_mean.copy_(features.mean(0))
        self.psi_std.copy_(features.std(0).clamp_min(1e-4))

    def attention(self, features: torch.Tensor) -> torch.Tensor:
        """Raw psi features (B, p) -> teacher weights a(x) (B, K) on the simplex."""
        z = self.standardize(features)  # (B, p)
        return torch.softmax(z @ self.prototypes.T / self.temperature + self.bias, dim=-1)

    def forward(self, features: torch.Tensor, probs: torch.Tensor) -> dict[str, torch.Tensor]:
        """psi features (B, p) and teacher probabilities H (B, K, C) -> weights (B, K) and R(x) (B, C)."""
        if probs.ndim != 3 or probs.shape[1] != self.num_teachers:
            raise ValueError(f"Expected teacher probabilities (B, {self.num_teachers}, C); got {tuple(probs.shape)}.")
        weights = self.attention(features)
        return {"weights": weights, "probs": torch.einsum("bk,bkc->bc", weights, probs)}

    @torch.no_grad()
    def init_prototypes(
        self,
        features: torch.Tensor,
        probs: torch.Tensor,
        labels: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Start each prototype at the mean psi of the samples its teacher handles best.

        With labels, a sample belongs to the teacher with the highest probability on its true class;
        without, to the most confident teacher. A teacher that wins no sample gets a small random
        prototype. The bias starts at the log share of samples each teacher won. Returns the assignment.
        """
        z = self.standardize(features)  # (N, p)
        if labels is not None:
            owner = probs[torch.arange(len(labels)), :, labels].argmax(-1)  # (N,)
        else:
            owner = probs.max(-1).values.argmax(-1)
        for k in range(self.num_teachers):
            mask = owner == k
            if mask.any():
                self.prototypes[k] = z[mask].mean(0)
            else:
                self.prototypes[k] = 0.1 * torch.randn(self.embed_dim, generator=generator)
        if self.bias.requires_grad:
            share = torch.bincount(owner, minlength=self.num_teachers).float() + 1.0
            self.bias.copy_((share / share.sum()).log())
        return owner

    # -- inference from raw inputs -------------------------------------------------------------
    @property
    def pool(self) -> ModelPool:
        """The teacher pool, rebuilt from the recorded ids (and commits) on first use."""
        if self._pool is None:
            self._pool = ModelPool(self.teachers, self.label_names, **self._load_kwargs)
        return self._pool

    def attach_pool(self, pool: ModelPool) -> None:
        if pool.ids != self.teachers:
            raise ValueError(f"Pool {pool.ids} is not the one this reuser was trained with: {self.teachers}.")
        self._pool = pool

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """uint8 images (N, 3, H, W) -> `probs` (N, C), `weights` (N, K), `predictions` (N,)."""
        if self._embedding is None:
            self._embedding = Embedding(self.embedding_spec)
        probs = self.pool.probs(images)
        out = self(self._embedding(images, probs), probs)
        out["predictions"] = out["probs"].argmax(-1)
        return out

    # -- Hub integration -----------------------------------------------------------------------
    @property
    def config(self) -> dict:
        """The init arguments that rebuild this reuser (what config.json holds)."""
        return {
            "teachers": list(self.teachers),
            "label_names": list(self.label_names),
            "embed_dim": self.embed_dim,
            "embedding": self.embedding_spec,
            "temperature": self.temperature,
            "use_bias": self.bias.requires_grad,
            "format_version": FORMAT_VERSION,
        }

    def generate_model_card(self, *args, repo_id: str | None = None, student_repo_id: str | None = None, **kwargs):
        """The model card: `model_cards/reuser.md` rendered with the config and `card_summary` (if trained)."""
        return reuser_card(self.config, self.card_summary, repo_id=repo_id, student_repo_id=student_repo_id)

    def push_to_hub(self, repo_id: str, *, model_card_kwargs: dict | None = None, **kwargs) -> str:
        """Push config.json, model.safetensors and the model card to `repo_id` in one commit.

        Accepts the arguments of `huggingface_hub.PyTorchModelHubMixin.push_to_hub` (`private`, `token`,
        `commit_message`, `branch`, ...). The card's loading snippet names `repo_id`.
        """
        local = [t for t in self.teachers if not split_teacher_id(t)[2]]
        if local:
            logger.warning(
                "Pushing a reuser whose teachers %s are local folders: it can only be rebuilt where they exist.", local
            )
        model_card_kwargs = {"repo_id": repo_id, **(model_card_kwargs or {})}
        return super().push_to_hub(repo_id, model_card_kwargs=model_card_kwargs, **kwargs)

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: str | None,
        cache_dir: str | Path | None,
        force_download: bool,
        local_files_only: bool,
        token: str | bool | None,
        map_location: str = "cpu",
        strict: bool = True,
        **model_kwargs,
    ) -> AttentionReuser:
        # Safetensors only and strict by default: a broken or mismatched checkpoint must fail loudly.
        if "teachers" not in model_kwargs:
            raise ValueError(
                f"{model_id!r} has no readable config.json listing teachers: not a saved AttentionReuser."
            )
        model = cls(**model_kwargs)
        if os.path.isdir(model_id):
            model_file = os.path.join(model_id, "model.safetensors")
            if not os.path.isfile(model_file):
                raise ValueError(f"{model_id!r} has no model.safetensors: not a saved AttentionReuser.")
        else:
            model_file = hf_hub_download(
                model_id,
                "model.safetensors",
                revision=revision,
                cache_dir=cache_dir,
                force_download=force_download,
                token=token,
                local_files_only=local_files_only,
            )
        try:
            load_model(model, model_file, strict=strict, device=map_location)
        except (RuntimeError, OSError, ValueError) as err:
            raise ValueError(f"Could not load the reuser weights from {model_id!r}: {err}") from err
        if token is not None:
            model._load_kwargs["token"] = token  # private teachers are fetched with the same token
        return model.eval()
