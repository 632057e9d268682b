"""Pure ``nn.Module`` models; none of them imports Lightning."""

from attention_lab.models.encoder_classifier import EncoderClassifier

__all__ = ["EncoderClassifier"]
