"""The attention reuser: one prototype per teacher, per-instance weights, a weighted teacher ensemble."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import torch
import torch.nn as nn
from huggingface_hub import PyTorchModelHubMixin, hf_hub_download
from safetensors.torch import load_model

from hf_mrl.data.inputs import image_batches
from hf_mrl.hub.cards import RunSummary, reuser_card, split_teacher_id
from hf_mrl.pool.model_pool import ModelPool
from hf_mrl.reuse.embedding import Embedding
from hf_mrl.utils import read_json

__all__ = ["AttentionReuser", "FORMAT_VERSION"]

FORMAT_VERSION = 1

logger = logging.getLogger(__name__)


class AttentionReuser(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="hf_mrl",
    tags=["hf_mrl", "model-reuse", "attention-reuse", "image-classification"],
    pipeline_tag="image-classification",
):
    """Weights K frozen teachers per instance: `a(x) = softmax(P psi(x) / tau + b)`, `R(x) = a(x)^T H(x)`.

    Args:
        teachers: the pool's teacher ids (`org/name@commit` or local paths), in pool order.
        label_names: the target class names, in class-index order.
        embed_dim: the dimension p of psi(x).
        embedding: the embedding spec (see `hf_mrl.reuse.embedding`).
        temperature: tau; defaults to sqrt(p), the usual scale of a dot-product attention.
        use_bias: a per-teacher bias b, a global prior that lets the router prefer one teacher everywhere.
        format_version: the config format; loading a newer one than this library knows fails clearly.
        trust_remote_code: whether the teachers were loaded with their repositories' own code. Recorded in
            config.json and the card; a reloaded reuser runs no remote code unless `from_pretrained` is told so again.
        allow_pickle: whether pickle-only teacher checkpoints were accepted (recorded, like `trust_remote_code`).
        label_map: the teachers' label mapping when the pool was given one (`ModelPool.label_mapping`), so that the
            rebuilt pool maps labels as in training; None: by name, as `ModelPool` does by default.
        teacher_hashes: each teacher's weights hash (id -> sha256 of its weight and config files), recorded when
            the pool is attached; a rebuilt pool whose teacher has other weights (an overwritten local folder, an id
            edited to another commit) is refused, or only warned about with `from_pretrained(...,
            allow_changed_teachers=True)`.

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
        trust_remote_code: bool = False,
        allow_pickle: bool = False,
        label_map: dict | None = None,
        teacher_hashes: dict | None = None,
    ):
        super().__init__()
        _check_init_args(teachers, label_names, embed_dim, format_version)
        self.teachers = list(teachers)
        self.label_names = [str(n) for n in label_names]
        self.trust_remote_code = bool(trust_remote_code)
        self.allow_pickle = bool(allow_pickle)
        self.label_map = label_map
        self.teacher_hashes = dict(teacher_hashes) if teacher_hashes else None
        self._allow_changed_teachers = False
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
        # How to fetch the teachers (token, trust_remote_code, allow_pickle), never saved: a reloaded reuser gets
        # them from the `from_pretrained` call only, whatever its config records.
        self._load_kwargs: dict = {"trust_remote_code": self.trust_remote_code, "allow_pickle": self.allow_pickle}
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

    def forward(self, features, probs: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """psi features (B, p) and teacher probabilities H (B, K, C) -> weights (B, K) and R(x) (B, C).

        Called with images only (`reuser(images)`), it is `predict(images)`: any input `predict` accepts.
        """
        if probs is None:
            return self.predict(features)
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
            pool = ModelPool(self.teachers, self.label_names, label_map=self.label_map, **self._load_kwargs)
            self._check_teacher_hashes(pool)
            self._pool = pool
        return self._pool

    def attach_pool(self, pool: ModelPool) -> None:
        """Use `pool` for `predict`; its weights hashes are recorded (saved in config.json) or, if recorded, checked."""
        if pool.ids != self.teachers:
            raise ValueError(f"Pool {pool.ids} is not the one this reuser was trained with: {self.teachers}.")
        if self.teacher_hashes is None:
            self.teacher_hashes = {t.id: t.weights_hash for t in pool.teachers if t.weights_hash}
        self._check_teacher_hashes(pool)
        self._pool = pool

    def _check_teacher_hashes(self, pool: ModelPool) -> None:
        changed = [
            (t.id, self.teacher_hashes[t.id], t.weights_hash)
            for t in pool.teachers
            if self.teacher_hashes and self.teacher_hashes.get(t.id) not in (None, t.weights_hash)
        ]
        if not changed:
            return
        what = "; ".join(f"{i}: trained with weights {old[:12]}, found {new and new[:12]}" for i, old, new in changed)
        message = (
            f"The weights of teacher(s) differ from those this reuser was trained with ({what}): its attention was "
            "learned for the old ones, so its predictions would change."
        )
        if not self._allow_changed_teachers:
            raise ValueError(message + " Restore them, or load with allow_changed_teachers=True to use them anyway.")
        logger.warning("%s Using them anyway (allow_changed_teachers=True).", message)

    @torch.no_grad()
    def predict(self, images, batch_size: int = 256) -> dict[str, torch.Tensor]:
        """Route and combine the teachers on raw images -> `probs` (N, C), `weights` (N, K), `predictions` (N,).

        Args:
            images: a PIL image, a list of them, numpy arrays (HW, HWC or NHWC; uint8, or float in [0, 1]), torch
                tensors (CHW or BCHW; uint8, or float in [0, 1]), a `datasets` image column (`dataset["image"]`,
                decoded PIL images or `{"bytes", "path"}` dicts), a `datasets.Dataset` with one image column, or
                paths to image files. Sizes may differ: each teacher sees each original image through its own
                processor. Float pixels are rounded to 8 bits, as a decoded image file holds them. Anything else is a
                `TypeError` listing what is accepted.
            batch_size: how many inputs are decoded at a time (the pool batches its teachers on its own).

        Rows come back in input order; a single image gives N = 1.

        >>> from PIL import Image  # doctest: +SKIP
        >>> reuser.predict([Image.open("a.png"), Image.open("b.jpg")])["predictions"]  # doctest: +SKIP
        tensor([3, 7])
        """
        expected = Embedding(self.embedding_spec).dim(self.num_teachers, len(self.label_names))
        if expected is not None and expected != self.embed_dim:
            raise ValueError(
                f"The {self.embedding_spec['type']!r} embedding gives {expected} features but the prototypes have "
                f"{self.embed_dim}: this reuser's embedding and weights do not belong together."
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int; got {batch_size!r}.")
        if self._embedding is None:
            self._embedding = Embedding(self.embedding_spec, **self._load_kwargs)
        from hf_mrl.data.images import ImageSet

        if isinstance(images, ImageSet):  # a lazy dataset split: the teachers' own processors on its originals
            probs = self.pool.probs(images)
            out = self(self._embedding(images, probs), probs)
            return {"probs": out["probs"], "weights": out["weights"], "predictions": out["probs"].argmax(-1)}
        parts = []
        for positions, batch in image_batches(images, chunk_size=batch_size):  # (n, 3, H, W) uint8, one size each
            probs = self.pool.probs(batch)  # (n, K, C)
            out = self(self._embedding(batch, probs), probs)
            parts.append((torch.tensor(positions), out))
        n = sum(len(p) for p, _ in parts)
        merged = {}
        for key in ("probs", "weights"):
            merged[key] = torch.empty(n, parts[0][1][key].shape[1], dtype=parts[0][1][key].dtype)
            for positions, out in parts:
                merged[key][positions] = out[key]
        merged["predictions"] = merged["probs"].argmax(-1)
        return merged

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
            "trust_remote_code": self.trust_remote_code,
            "allow_pickle": self.allow_pickle,
            **({"label_map": self.label_map} if self.label_map is not None else {}),
            **({"teacher_hashes": dict(self.teacher_hashes)} if self.teacher_hashes else {}),
        }

    def _save_pretrained(self, save_directory: Path) -> None:
        """model.safetensors, and config.json from `config` (so options recorded after construction are saved)."""
        super()._save_pretrained(save_directory)
        (Path(save_directory) / "config.json").write_text(json.dumps(self.config, sort_keys=True, indent=2))

    def generate_model_card(self, *args, repo_id: str | None = None, student_repo_id: str | None = None, **kwargs):
        """The model card: `hf_mrl/hub/templates/reuser.md` rendered with the config and `card_summary` (if trained)."""
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
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | Path,
        *,
        trust_remote_code: bool = False,
        allow_pickle: bool = False,
        allow_changed_teachers: bool = False,
        **kwargs,
    ) -> AttentionReuser:
        """Load a saved reuser from a local folder or a Hub repo; its pool is rebuilt on first use.

        Args:
            pretrained_model_name_or_path: a folder written by `save_pretrained`, or a Hub repo id.
            trust_remote_code: let teachers run their repositories' own code when the pool is rebuilt. Off by
                default, even when the reuser was trained with it (its config records that; a warning says so).
            allow_pickle: accept pickle-only teacher checkpoints when the pool is rebuilt (off by default).
            allow_changed_teachers: when a rebuilt teacher's weights differ from the recorded hash, warn instead of
                refusing.
            kwargs: `revision`, `token`, `cache_dir`, `force_download`, `local_files_only`, `map_location`,
                `strict`, as for `huggingface_hub.PyTorchModelHubMixin.from_pretrained`.

        Raises `ValueError` naming the problem for anything that is not a loadable reuser: a missing or unreadable
        config.json, a config format from another hf_mrl version, weights that are corrupted, contain NaN, or do
        not match the config's shapes.
        """
        model_id = str(pretrained_model_name_or_path)
        _check_config(_read_config(model_id, kwargs), model_id)
        model = super().from_pretrained(model_id, **kwargs)
        model._load_kwargs.update(trust_remote_code=bool(trust_remote_code), allow_pickle=bool(allow_pickle))
        model._allow_changed_teachers = bool(allow_changed_teachers)
        if model.trust_remote_code and not trust_remote_code:
            logger.warning(
                "Reuser %s was trained with teachers that run their repositories' own code (trust_remote_code=True). "
                "Its pool will not run that code: pass trust_remote_code=True to from_pretrained if you trust them.",
                model_id,
            )
        return model

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
        _check_embedding_dim(model, model_id)
        _check_weights(model, model_file, model_id, strict)
        try:
            load_model(model, model_file, strict=strict, device=map_location)
        except Exception as err:  # SafetensorError is no built-in subclass
            raise ValueError(f"Could not load the reuser weights from {model_id!r}: {err}") from err
        _check_loaded(model, model_id)
        # The recorded trust_remote_code / allow_pickle are history, not permission: `from_pretrained` decides.
        model._load_kwargs = {"trust_remote_code": False, "allow_pickle": False}
        if token is not None:
            model._load_kwargs["token"] = token  # private teachers are fetched with the same token
        return model.eval()


# ------------------------------------------------------------------------------------------------ validation


def _check_init_args(teachers, label_names, embed_dim, format_version) -> None:
    if isinstance(format_version, bool) or not isinstance(format_version, int) or format_version < 1:
        raise ValueError(
            f"format_version must be a positive integer; got {format_version!r}: this config was not written by "
            "hf_mrl (or by an incompatible version)."
        )
    if format_version > FORMAT_VERSION:
        raise ValueError(
            f"This reuser was saved with format version {format_version}, newer than this hf_mrl "
            f"understands ({FORMAT_VERSION}): upgrade hf_mrl."
        )
    if isinstance(teachers, (str, bytes)) or not all(isinstance(t, str) for t in teachers or []):
        raise TypeError(f"teachers must be a list of teacher ids (str); got {teachers!r}.")
    if not teachers:
        raise ValueError("An AttentionReuser needs at least one teacher.")
    if isinstance(label_names, (str, bytes)) or not isinstance(label_names, (list, tuple)) or not label_names:
        raise TypeError(f"label_names must be a non-empty list of class names; got {label_names!r}.")
    if isinstance(embed_dim, bool) or not isinstance(embed_dim, int):
        raise TypeError(f"embed_dim must be an int; got {embed_dim!r}.")
    if embed_dim < 1:
        raise ValueError(f"embed_dim must be >= 1; got {embed_dim}.")


def _read_config(model_id: str, kwargs: dict) -> dict:
    """The raw config.json of a saved reuser (a folder or a Hub repo), as a dict; `ValueError` for anything else."""
    if os.path.isdir(model_id):
        path = os.path.join(model_id, "config.json")
        if not os.path.isfile(path):
            raise ValueError(f"{model_id!r} has no config.json: not a saved AttentionReuser.")
    else:
        from huggingface_hub.errors import (
            EntryNotFoundError,
            HfHubHTTPError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        fetch = {
            k: kwargs[k]
            for k in ("revision", "cache_dir", "force_download", "token", "local_files_only")
            if k in kwargs
        }
        try:
            path = hf_hub_download(model_id, "config.json", **fetch)
        except RevisionNotFoundError as err:
            raise ValueError(f"Reuser repo {model_id!r} has no revision {fetch.get('revision')!r}.") from err
        except RepositoryNotFoundError as err:
            raise ValueError(
                f"Reuser {model_id!r} was not found: no such local folder, and no Hub repository by that id that you "
                "can access (a private repo needs a token)."
            ) from err
        except EntryNotFoundError as err:
            raise ValueError(f"Hub repo {model_id!r} has no config.json: not a saved AttentionReuser.") from err
        except LocalEntryNotFoundError as err:
            raise ValueError(
                f"Reuser {model_id!r} is not in the Hub cache and the Hub cannot be reached (or HF_HUB_OFFLINE=1)."
            ) from err
        except HfHubHTTPError as err:
            raise ValueError(f"Reuser {model_id!r} could not be fetched from the Hub: {err}") from err
        except ValueError as err:  # HFValidationError: neither a folder nor a repo id
            raise ValueError(
                f"Reuser {model_id!r} was not found: no such local folder, and not a Hub repo id ({err})."
            ) from None
    try:
        config = read_json(path, what=f"The config.json of {model_id!r}")
    except ValueError as err:  # invalid JSON, or not UTF-8 text
        raise ValueError(
            f"The config.json of {model_id!r} is not valid JSON ({err}): not a saved AttentionReuser."
        ) from None
    if not isinstance(config, dict):
        raise ValueError(f"The config.json of {model_id!r} is not a JSON object: not a saved AttentionReuser.")
    return config


def _check_config(config: dict, model_id: str) -> None:
    """A saved config this version can rebuild, with an embedding whose size matches `embed_dim`."""
    if "teachers" not in config:
        keys = sorted(config)[:8]
        raise ValueError(
            f"The config.json of {model_id!r} lists no teachers (keys: {keys}): not a saved AttentionReuser "
            "(a teacher or a student checkpoint?)."
        )
    try:
        _check_init_args(
            config["teachers"],
            config.get("label_names"),
            config.get("embed_dim"),
            config.get("format_version", FORMAT_VERSION),
        )
        Embedding(config.get("embedding") or "teacher-outputs")  # a known embedding spec
    except (TypeError, ValueError) as err:
        raise ValueError(f"The config.json of {model_id!r} is not a usable AttentionReuser config: {err}") from None


def _check_embedding_dim(model: AttentionReuser, model_id: str) -> None:
    """The embedding named in the config must produce `embed_dim` features, or the reuser can never predict."""
    spec = model.embedding_spec
    expected = Embedding(spec).dim(model.num_teachers, len(model.label_names))
    if expected is not None and expected != model.embed_dim:
        why = (
            f"{model.num_teachers} teachers x {len(model.label_names)} labels"
            if spec["type"] == "teacher-outputs"
            else f"dim={spec.get('dim')}"
        )
        raise ValueError(
            f"Could not load the reuser weights from {model_id!r}: config.json says embed_dim={model.embed_dim}, but "
            f"its {spec['type']!r} embedding gives {expected} features ({why}): the embedding and the prototypes do "
            "not belong together."
        )


def _check_weights(model: AttentionReuser, model_file: str, model_id: str, strict: bool) -> None:
    """Open model.safetensors and compare its tensors with the config's shapes before loading anything."""
    from safetensors import safe_open

    try:
        with safe_open(model_file, framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as err:  # SafetensorError: truncated or not safetensors
        raise ValueError(
            f"The model.safetensors of {model_id!r} is corrupted ({err}): the file is truncated or not "
            "safetensors. Download or save the reuser again."
        ) from None
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if strict:
        missing, unexpected = sorted(set(expected) - set(shapes)), sorted(set(shapes) - set(expected))
        if missing or unexpected:
            raise ValueError(
                f"Could not load the reuser weights from {model_id!r}: model.safetensors lacks {missing} and has "
                f"unexpected {unexpected}: not the weights of this AttentionReuser."
            )
    for name, shape in shapes.items():
        if name in expected and expected[name] != shape:
            raise ValueError(
                f"Could not load the reuser weights from {model_id!r}: {name} has shape {list(shape)} in "
                f"model.safetensors but {list(expected[name])} from config.json ({model.num_teachers} teachers, "
                f"embed_dim={model.embed_dim}): the config and the weights do not belong together."
            )


def _check_loaded(model: AttentionReuser, model_id: str) -> None:
    for name, tensor in model.state_dict().items():
        if not torch.isfinite(tensor).all():
            raise ValueError(
                f"The reuser weights in {model_id!r} contain NaN or infinite values ({name}): the checkpoint is "
                "corrupted."
            )
    if not (model.psi_std > 0).all():
        raise ValueError(
            f"The reuser weights in {model_id!r} have a non-positive psi_std: the checkpoint is corrupted."
        )
