"""LightningDataModules; they know nothing of models."""

from attention_lab.data.mnist import MNISTDataModule

__all__ = ["MNISTDataModule"]
