"""Lightning callbacks of the project."""

from attention_lab.callbacks.attention_maps import AttentionMapCallback
from attention_lab.callbacks.history import MetricsHistory

__all__ = ["AttentionMapCallback", "MetricsHistory"]
