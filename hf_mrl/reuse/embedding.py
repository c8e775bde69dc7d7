"""The shared, fixed embedding psi(x) that the attention prototypes live in.

Three kinds, chosen by a JSON-serialisable spec stored in the reuser's config:
- `{"type": "teacher-outputs"}`: concatenated teacher log-probabilities (needs nothing beyond the pool);
- `{"type": "encoder", "model_id": ...}`: pooled features of a frozen timm / transformers backbone;
- `{"type": "pixels", "dim": 64, "seed": 0}`: a fixed random projection of the raw input.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
import torch
import torch.nn.functional as F

from hf_mrl.pool.cache import LogitCache, fingerprint

__all__ = ["Embedding", "EMBEDDING_TYPES"]

EMBEDDING_TYPES = ("teacher-outputs", "encoder", "pixels")
_PIXEL_SIZE = 32


class Embedding:
    """Computes raw psi features; the reuser standardises them with statistics it stores.

    Args:
        spec: `{"type": ...}` plus the options of that type (see the module docstring). A bare string
            is accepted for `teacher-outputs` and `pixels`, and `encoder:<model id>` for an encoder.
        cache_dir: where encoder features persist across runs.
        load_options: for an encoder, `token`, `allow_pickle` and `trust_remote_code` (both off by default),
            as for `Teacher.load`.
    """

    def __init__(
        self, spec: dict | str = "teacher-outputs", cache_dir: str | os.PathLike | None = None, **load_options
    ):
        given = spec
        if isinstance(spec, str):
            spec = (
                {"type": "encoder", "model_id": spec.split(":", 1)[1]}
                if spec.startswith("encoder:")
                else {"type": spec}
            )
        if not isinstance(spec, dict) or spec.get("type") not in EMBEDDING_TYPES:
            raise ValueError(f"Unknown embedding {given!r}: use one of {EMBEDDING_TYPES} (e.g. 'encoder:org/name').")
        if spec["type"] == "pixels":
            try:
                spec = {"type": "pixels", "dim": int(spec.get("dim", 64)), "seed": int(spec.get("seed", 0))}
            except (TypeError, ValueError):
                raise ValueError(f"The pixels embedding needs integer `dim` and `seed`; got {given!r}.") from None
            if spec["dim"] < 1:
                raise ValueError(f"pixels embedding dim must be >= 1; got {spec['dim']}.")
        if spec["type"] == "encoder" and not spec.get("model_id"):
            raise ValueError("The encoder embedding needs a `model_id` (a timm or transformers backbone).")
        unknown = set(load_options) - {"token", "allow_pickle", "trust_remote_code"}
        if unknown:
            raise TypeError(
                f"Unknown Embedding options {sorted(unknown)}: use token, allow_pickle, trust_remote_code."
            )
        self.spec = spec
        self._load_options = load_options
        self._encoder = None
        self._cache = LogitCache(cache_dir)

    def dim(self, num_teachers: int, num_labels: int) -> int | None:
        """Feature dimension p, or None when only a forward pass can tell (encoders)."""
        if self.spec["type"] == "teacher-outputs":
            return num_teachers * num_labels
        if self.spec["type"] == "pixels":
            return self.spec["dim"]
        return None

    def prepare(self) -> Embedding:
        """Load the encoder now (a no-op for the other types), so a bad `model_id` fails before any long work."""
        if self.spec["type"] == "encoder" and self._encoder is None:
            self._encoder = _load_encoder(self.spec["model_id"], **self._load_options)
            pinned = self._encoder[3].split("|")[0]
            if pinned != self.spec["model_id"]:  # a Hub encoder: its features (and the saved reuser) name the commit
                self.spec = {**self.spec, "model_id": pinned}
        return self

    def __call__(self, images, probs: torch.Tensor, num_workers: int = 0) -> torch.Tensor:
        """Raw features (N, p) from uint8 images (N, 3, H, W) or an `ImageSet`, and teacher probabilities (N, K, C).

        An `ImageSet` is read in batches (`num_workers` DataLoader processes): the pixels embedding at its own
        32 px, an encoder through its own processor on the originals, cached by each image's bytes."""
        from hf_mrl.data.images import ImageSet

        kind = self.spec["type"]
        if kind == "teacher-outputs":
            return probs.clamp_min(1e-6).log().flatten(1)
        if images is None:
            raise ValueError(f"The {kind!r} embedding needs the input images.")
        if isinstance(images, ImageSet):
            if kind == "pixels":
                small = images.resized(_PIXEL_SIZE)
                parts = [
                    self(small[pos], probs[:0])
                    for pos in np.array_split(np.arange(len(small)), max(1, len(small) // 1024))
                ]
                return torch.cat(parts) if parts else torch.zeros(0, self.spec["dim"])
            return self._encode_originals(images, num_workers)
        if kind == "pixels":
            x = images.float() / 255.0
            x = F.interpolate(x, size=(_PIXEL_SIZE, _PIXEL_SIZE), mode="bilinear", antialias=True, align_corners=False)
            x = x.expand(-1, 3, -1, -1).flatten(1)
            gen = torch.Generator().manual_seed(self.spec["seed"])
            proj = torch.randn(x.shape[1], self.spec["dim"], generator=gen) / x.shape[1] ** 0.5
            return x @ proj
        return self._encode(images)

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        model, preprocess, _, pinned = self.prepare()._encoder
        key = "encoder-" + hashlib.sha256(pinned.encode()).hexdigest()[:24]
        fp = fingerprint(images)
        feats = self._cache.get(key, fp)
        if feats is None:
            with torch.inference_mode():
                feats = torch.cat([model(preprocess(images[i : i + 256])) for i in range(0, len(images), 256)])
            self._cache.put(key, fp, feats)
        return feats

    def _encode_originals(self, images, num_workers: int) -> torch.Tensor:
        model, _, transform, pinned = self.prepare()._encoder
        keys = images.keys(num_workers)
        key = "encoder-" + hashlib.sha256(pinned.encode()).hexdigest()[:24]
        found, hit = self._cache.lookup(key, keys, None)
        missing = np.flatnonzero(~hit)
        if len(missing):
            parts = []
            with torch.inference_mode():
                for _, x in images.batches(transform, missing, batch_size=64, num_workers=num_workers):
                    parts.append(model(x).float())
            new = torch.cat(parts)
            with self._cache.writer(key, keys[missing], encoder=pinned) as writer:
                writer.write(new)
            if found is None:
                found = torch.zeros(len(images), new.shape[1])
            found[torch.from_numpy(missing)] = new
        return found

    @property
    def pinned_id(self) -> str | None:
        """The encoder as `model_id@commit` (a local folder: its path), once loaded."""
        return None if self._encoder is None else self._encoder[3].split("|")[0]


def _load_encoder(
    model_id: str, token: str | bool | None = None, allow_pickle: bool = False, trust_remote_code: bool = False
):
    """A frozen backbone returning pooled features, from a timm or transformers checkpoint.

    Loaded under the same rules as a teacher: safetensors weights only unless `allow_pickle`, no repository code
    unless `trust_remote_code`; every failure is a `TeacherLoadError` (a `ValueError`) naming the encoder.
    """
    from hf_mrl.pool.model_pool import TeacherLoadError, _check_finite, _checked_checkpoint, _timm_preprocess

    def fail(reason: str, message: str) -> TeacherLoadError:
        return TeacherLoadError(model_id, reason, message, what="Encoder")

    from hf_mrl.pool.model_pool import _files_hash, _Processor, parse_teacher_id, timm_transform

    folder, commit, library, _, weights = _checked_checkpoint(
        model_id, token, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, what="Encoder"
    )
    name = parse_teacher_id(model_id)[0]
    # What the features depend on: the commit (Hub) and the weight files' contents.
    pinned = (f"{name}@{commit}" if commit else str(model_id)) + "|" + _files_hash(list(weights))
    try:
        if library == "timm":
            import timm

            model = timm.create_model(f"local-dir:{folder}", pretrained=True, num_classes=0).eval()
            preprocess = _timm_preprocess(model.pretrained_cfg)
        else:
            from transformers import AutoImageProcessor, AutoModel

            backbone = AutoModel.from_pretrained(
                folder, use_safetensors=None if allow_pickle else True, trust_remote_code=trust_remote_code
            ).eval()
            processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except Exception as err:  # the libraries raise many types for a broken checkpoint
        raise fail("load_failed", f"could not be loaded by {library} ({err}).") from err
    if library == "timm":
        _check_finite(model, model_id, what="Encoder")
        return model, preprocess, timm_transform(model)[0], pinned
    _check_finite(backbone, model_id, what="Encoder")

    def model(pixel_values: torch.Tensor) -> torch.Tensor:
        out = backbone(pixel_values=pixel_values)
        pooled = getattr(out, "pooler_output", None)
        if pooled is None:
            pooled = out.last_hidden_state.mean(dim=1)
        return pooled.flatten(1)

    preprocess = _Processor(processor)
    return model, preprocess, preprocess, pinned
