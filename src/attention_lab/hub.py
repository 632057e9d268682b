"""Where pretrained files come from: a local checkpoint directory, or the Hugging Face hub.

Kept apart from ``attention_lab.pretrained`` (which builds models) so that data modules can find
a checkpoint's tokenizer without importing any model.
"""

from __future__ import annotations

from pathlib import Path

from attention_lab.errors import ConfigError

SETTING = "model.pretrained"
BERT_FILES = ("config.json", "model.safetensors", "tokenizer.json", "vocab.txt")
BERT_FALLBACK_WEIGHTS = "pytorch_model.bin"


def resolve_bert_dir(pretrained: str, setting: str = SETTING) -> Path:
    """A local checkpoint directory as is; otherwise the hub id's files, downloaded or cached."""
    local = Path(pretrained).expanduser()
    if local.is_dir():
        return local
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(pretrained, allow_patterns=list(BERT_FILES)))
        if not (folder / "model.safetensors").exists():  # an older checkpoint: the .bin then
            patterns = [*BERT_FILES, BERT_FALLBACK_WEIGHTS]
            folder = Path(snapshot_download(pretrained, allow_patterns=patterns))
    except Exception as error:  # offline, unknown id, no permission: all mean the same to users
        raise ConfigError(
            f"{setting}={pretrained} is neither a local checkpoint directory nor downloadable "
            f"from the Hugging Face hub ({type(error).__name__}: {error}). Download it where "
            f"there is internet (huggingface-cli download {pretrained} --local-dir DIR) and set "
            f"{setting}=DIR"
        ) from error
    return folder
