"""Pure ``nn.Module`` models; none of them imports Lightning."""

from attention_lab.models.bert import Bert, BertSentimentClassifier, BertTagger
from attention_lab.models.course import CourseEncoderClassifier, CourseViT
from attention_lab.models.encoder_classifier import EncoderClassifier
from attention_lab.models.reference import BiLSTMTagger, CNNTextClassifier
from attention_lab.models.seq2seq import Seq2SeqTransformer
from attention_lab.models.text import TransformerTagger, TransformerTextClassifier
from attention_lab.models.vit import VisionTransformer

__all__ = [
    "Bert",
    "BertSentimentClassifier",
    "BertTagger",
    "BiLSTMTagger",
    "CNNTextClassifier",
    "CourseEncoderClassifier",
    "CourseViT",
    "EncoderClassifier",
    "Seq2SeqTransformer",
    "TransformerTagger",
    "TransformerTextClassifier",
    "VisionTransformer",
]
