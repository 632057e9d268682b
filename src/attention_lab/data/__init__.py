"""LightningDataModules; they know nothing of models."""

from attention_lab.data.mnist import MNISTDataModule
from attention_lab.data.multi30k import Multi30kDataModule
from attention_lab.data.sst2 import SST2DataModule
from attention_lab.data.ud import UDDataModule

__all__ = ["MNISTDataModule", "Multi30kDataModule", "SST2DataModule", "UDDataModule"]
