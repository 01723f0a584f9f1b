"""Model folders: the names a user writes (``default``, a folder, a hub name) resolved to what
``from_pretrained`` loads, the files a model folder holds, and the error of one that cannot load.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import ModelError
from .default_model import build_default_model

ENCODER_SETTINGS_FILE = "hybridlib_encoder.json"  # DualEncoder's settings beside the weights
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json",
                "pytorch_model.bin", "pytorch_model.bin.index.json")


def _looks_like_path(name: str) -> bool:
    # hub names are "model" or "organisation/model"
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1


def resolve_model(name: str) -> str:
    """What ``from_pretrained`` should load for a model name.

    ``default`` -> the built default encoder folder (built on first use); an existing folder ->
    that folder (``ModelError`` naming it if it holds no weights); anything else is passed
    through as a Hugging Face hub name (loads where a hub is reachable).
    """
    if name == "default":
        return str(build_default_model())
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelError(f"{path}: is a file; a model is a folder saved with save_pretrained")
        if not any((path / f).is_file() for f in WEIGHT_FILES):
            raise ModelError(f"{path}: no model weights in this folder (expected one of {', '.join(WEIGHT_FILES)})")
        return str(path)
    if _looks_like_path(name):
        raise ModelError(f"{path}: no such model folder")
    return name


def unreachable(name_or_path: str, label: str, error: Exception) -> ModelError:
    """The ModelError of a failed ``from_pretrained``: a broken folder, or a hub name out of reach."""
    if Path(name_or_path).exists():
        return ModelError(f"{name_or_path}: cannot load the model ({error})")
    return ModelError(f"model {label!r}: no such local folder, and the Hugging Face hub cannot provide it "
                      f"(unreachable or unknown name: {str(error).splitlines()[0]}); use model 'default' "
                      f"or a local folder")
