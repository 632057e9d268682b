"""Pure ``nn.Module`` models; none of them imports Lightning."""

from attention_lab.models.course import CourseEncoderClassifier, CourseViT
from attention_lab.models.encoder_classifier import EncoderClassifier
from attention_lab.models.seq2seq import Seq2SeqTransformer
from attention_lab.models.vit import VisionTransformer

__all__ = [
    "CourseEncoderClassifier",
    "CourseViT",
    "EncoderClassifier",
    "Seq2SeqTransformer",
    "VisionTransformer",
]
