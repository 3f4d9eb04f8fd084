"""Hub repo ids: download only the files a load needs, or find them in the local cache offline.

`HF_HUB_OFFLINE=1` (or no network) uses the cache alone; a repo that is not cached is a clear error.
"""

from __future__ import annotations

from pathlib import Path

from .files import CheckpointError

# What a diffusers-layout SVD load reads from a repo (the {variant} part is "" or ".fp16").
DIFFUSERS_FILES = (
    "model_index.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model{variant}.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model{variant}.safetensors",
    "image_encoder/config.json",
    "image_encoder/model{variant}.safetensors",
)


def download_command() -> str:
    """The download command of the installed huggingface-hub: `hf download` since 0.34 (the only
    one from 1.0 on), `huggingface-cli download` before."""
    from importlib.metadata import version

    major, minor = (int(part) for part in version("huggingface-hub").split(".")[:2])
    return "hf download" if (major, minor) >= (0, 34) else "huggingface-cli download"


def download(
    repo_id: str,
    variant: str | None = None,
    filename: str | None = None,
    revision: str | None = None,
) -> Path:
    """The local path of `repo_id`'s weights: an official file (`filename`) or the diffusers folder."""
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    try:
        if filename is not None:
            return Path(hf_hub_download(repo_id, filename, revision=revision))
        suffix = f".{variant}" if variant else ""
        patterns = [name.format(variant=suffix) for name in DIFFUSERS_FILES]
        folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except LocalEntryNotFoundError:
        raise CheckpointError(
            f"{repo_id!r} is not in the local Hugging Face cache and the hub cannot be reached "
            f"(offline, or HF_HUB_OFFLINE=1): download it first with `{download_command()} "
            f"{repo_id}`, or pass a local path"
        ) from None
    except RepositoryNotFoundError:
        raise CheckpointError(f"no hub repo {repo_id!r} (or it is private: log in first)") from None
    except EntryNotFoundError:
        raise CheckpointError(f"{repo_id!r} has no file {filename!r}") from None
    missing = [name for name in patterns if not (folder / name).is_file()]
    if missing:
        raise CheckpointError(
            f"{repo_id!r} (at {str(folder)!r}) lacks {missing}; for an official single file in the "
            "repo pass filename='svd_xt.safetensors' (or the file it has)"
        )
    return folder
