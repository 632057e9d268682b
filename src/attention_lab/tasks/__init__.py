"""LightningModules: they wrap a model with a loss, metrics and optimisers."""

from attention_lab.tasks.classification import ImageClassificationTask
from attention_lab.tasks.text import SequenceClassificationTask, TokenClassificationTask
from attention_lab.tasks.translation import TranslationTask

__all__ = [
    "ImageClassificationTask",
    "SequenceClassificationTask",
    "TokenClassificationTask",
    "TranslationTask",
]
