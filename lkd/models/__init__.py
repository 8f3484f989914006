"""Plain nn.Modules (no Lightning imports)."""

from lkd.models.cnn import ConvNet
from lkd.models.dkvb import DiscreteKeyValueBottleneck, DKVBOutput
from lkd.models.encoders import PCAEncoder, TrainedEncoder
from lkd.models.key_init import discrete_key_init, init_keys_from_embeddings
from lkd.models.mlp import MLP
from lkd.models.projections import FeatureProjections
from lkd.models.router import StudentAwareRouter
from lkd.models.routing import AllExperts, KnowledgeAugmentation, Routing, StudentAwareGate, TeacherRouting, route_teacher
from lkd.models.text_classifier import DKVBSettings, TextClassifierOutput, TransformerClassifier
from lkd.models.transfer import copy_transformer_weights, evenly_spaced_layers


__all__ = [
    "MLP", "AllExperts", "ConvNet", "DKVBOutput", "DKVBSettings", "DiscreteKeyValueBottleneck", "FeatureProjections",
    "KnowledgeAugmentation", "PCAEncoder", "Routing", "StudentAwareGate", "StudentAwareRouter", "TeacherRouting",
    "TextClassifierOutput", "TrainedEncoder", "TransformerClassifier", "copy_transformer_weights", "discrete_key_init",
    "evenly_spaced_layers", "init_keys_from_embeddings", "route_teacher",
]
