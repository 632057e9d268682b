"""Lightning callbacks of the project."""

from attention_lab.callbacks.attention_maps import AttentionMapCallback

__all__ = ["AttentionMapCallback"]
