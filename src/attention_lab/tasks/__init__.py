"""LightningModules: they wrap a model with a loss, metrics and optimisers."""

from attention_lab.tasks.classification import ImageClassificationTask

__all__ = ["ImageClassificationTask"]
