"""Pointing in-process Hugging Face clients at a local Hub or a prepared cache, and uploading a parquet dataset to it."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

Patch = tuple[object, str, Any]


def _loaded(name: str) -> Any:
    return sys.modules.get(name)


def endpoint_patches(endpoint: str) -> list[Patch]:
    """``(object, attribute, value)`` triples that point the in-process Hub clients at ``endpoint``.

    ``huggingface_hub`` reads ``HF_ENDPOINT`` once, at import: ``constants.ENDPOINT`` and the derived
    ``HUGGINGFACE_CO_URL_TEMPLATE`` (``hf_hub_url`` builds download URLs from the template and only rewrites URLs that
    start with ``constants.ENDPOINT``, so both must change together). Copies live in the module-level ``HfApi``
    instance (whose bound methods are re-exported, e.g. ``huggingface_hub.model_info`` that timm imports), in
    ``HfFileSystem``'s ``hffs``, in the trusted-origin sets used for redirects, in transformers' cached ``HfApi``
    and in datasets/evaluate configs. Modules not imported yet are skipped: they read ``HF_ENDPOINT`` when imported.
    """
    import huggingface_hub.constants as constants
    import huggingface_hub.hf_api as hf_api
    import huggingface_hub.utils._http as hf_http

    endpoint = endpoint.rstrip("/")
    host = urlsplit(endpoint).hostname or ""
    patches: list[Patch] = [
        (constants, "ENDPOINT", endpoint),
        (constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}"),
        (constants, "HF_URL_HOSTS", constants.HF_URL_HOSTS | {host.lower()}),
        (hf_api.api, "endpoint", endpoint),
        (hf_http, "_HUB_ORIGINS", hf_http._HUB_ORIGINS | {hf_http._url_origin(endpoint)}),
    ]
    if fs := _loaded("huggingface_hub.hf_file_system"):
        patches += [(fs.hffs, "endpoint", endpoint), (fs.hffs._api, "endpoint", endpoint)]
    for name in ("huggingface_hub.utils._git_credential", "huggingface_hub.cli.auth"):
        if module := _loaded(name):
            patches.append((module, "ENDPOINT", endpoint))
    if module := _loaded("transformers.utils.hub"):
        patches.append((module, "_hf_api", None))  # lazily re-created with the patched endpoint
    if module := _loaded("datasets.config"):
        patches += [
            (module, "HF_ENDPOINT", endpoint),
            (module, "HUB_DATASETS_URL", endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}"),
        ]
    if module := _loaded("evaluate.config"):
        patches += [
            (module, "HF_ENDPOINT", endpoint),
            (module, "HF_LIST_ENDPOINT", endpoint + "/api/spaces?filter={type}"),
            (module, "HUB_EVALUATE_URL", endpoint + "/spaces/{path}/resolve/{revision}/{name}"),
        ]
    return patches


def cache_patches(hf_home: str | Path) -> list[Patch]:
    """``(object, attribute, value)`` triples moving the in-process ``HF_HOME``-derived paths under ``hf_home``."""
    import huggingface_hub.constants as constants

    home = str(hf_home)
    hub, assets = os.path.join(home, "hub"), os.path.join(home, "assets")
    values = {
        "HF_HOME": home,
        "default_cache_path": hub,
        "default_assets_cache_path": assets,
        "HUGGINGFACE_HUB_CACHE": hub,
        "HF_HUB_CACHE": hub,
        "HUGGINGFACE_ASSETS_CACHE": assets,
        "HF_ASSETS_CACHE": assets,
        "HF_XET_CACHE": os.path.join(home, "xet"),
        "default_xet_cache_path": os.path.join(home, "xet"),
        "HF_TOKEN_PATH": os.path.join(home, "token"),
        "HF_STORED_TOKENS_PATH": os.path.join(home, "stored_tokens"),
        "CHECK_FOR_UPDATE_DONE_PATH": os.path.join(home, ".check_for_update_done"),
        "CHECK_FOR_SKILL_UPDATE_DONE_PATH": os.path.join(home, ".check_for_skill_update_done"),
        "AGENT_HARNESSES_PATH": os.path.join(home, ".agent_harnesses.json"),
    }
    patches: list[Patch] = [(constants, k, v) for k, v in values.items() if hasattr(constants, k)]
    for name, attr, value in [
        ("huggingface_hub.utils._cache_manager", "HF_HUB_CACHE", hub),
        ("huggingface_hub.utils._cache_assets", "HF_ASSETS_CACHE", assets),
        ("transformers.utils.hub", "HF_MODULES_CACHE", os.path.join(home, "modules")),
        ("transformers.dynamic_module_utils", "HF_MODULES_CACHE", os.path.join(home, "modules")),
    ]:
        if (module := _loaded(name)) is not None and hasattr(module, attr):
            patches.append((module, attr, value))
    return patches + _datasets_cache_patches(home)


def _datasets_cache_patches(home: str) -> list[Patch]:
    """``datasets`` copies its cache folders from ``HF_HOME`` / ``HF_DATASETS_CACHE`` at import: move them too, or
    a test's ``load_dataset`` writes to (and, offline, reads "the latest cached version" from) the user's cache."""
    module = _loaded("datasets.config")
    if module is None:
        return []
    cache = Path(home) / "datasets"
    downloads = cache / module.DOWNLOADED_DATASETS_DIR
    values = {
        "HF_CACHE_HOME": home,
        "HF_DATASETS_CACHE": cache,
        "HF_MODULES_CACHE": Path(home) / "modules",
        "DOWNLOADED_DATASETS_PATH": downloads,
        "EXTRACTED_DATASETS_PATH": downloads / module.EXTRACTED_DATASETS_DIR,
    }
    return [(module, k, v) for k, v in values.items() if hasattr(module, k)]


def upload_parquet_dataset(
    dataset_dict: Any, repo_id: str, *, revision: str | None = None, token: str | None = None, create: bool = True
) -> str:
    """Publish a ``datasets.DatasetDict`` as a parquet dataset repository, laid out as ``push_to_hub`` lays it out.

    One shard a split, ``data/{split}-00000-of-00001.parquet`` (the file names ``datasets`` reads split names from;
    features such as ``ClassLabel`` names travel in the parquet schema). Uploaded with ``HfApi.upload_folder`` as
    regular files: ``DatasetDict.push_to_hub`` itself needs LFS or Xet storage, which :class:`LocalHub` does not
    serve. Returns the commit sha.

    >>> upload_parquet_dataset(dd, "org/pets")  # doctest: +SKIP
    """
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    if create:
        api.create_repo(repo_id, repo_type="dataset", exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        for split, dataset in dataset_dict.items():
            dataset.to_parquet(os.path.join(folder, "data", f"{split}-00000-of-00001.parquet"))
        info = api.upload_folder(
            repo_id=repo_id,
            repo_type="dataset",
            folder_path=folder,
            revision=revision,
            delete_patterns=["data/*.parquet"],  # a split left out of this upload is gone, as with push_to_hub
            commit_message="Upload dataset (parquet)",
        )
    return info.oid
