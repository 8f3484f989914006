"""Plain nn.Modules (no Lightning imports). Every public class is exported here, so a YAML ``class_path`` reads
``lkd.models.TinyLlamaLM`` (the long paths, ``lkd.models.causal_lm.TinyLlamaLM``, still import)."""

from lkd.models.causal_lm import CausalLM, PretrainedLM, PrunedLM, RetokenizedLM, SmolLM2, TinyLlamaLM, TinyMoELM
from lkd.models.cnn import ConvNet
from lkd.models.dkvb import DiscreteKeyValueBottleneck, DKVBOutput
from lkd.models.encoders import PCAEncoder, TrainedEncoder
from lkd.models.key_init import discrete_key_init, init_keys_from_embeddings
from lkd.models.mlp import MLP
from lkd.models.projections import FeatureProjections
from lkd.models.pruning import Calibration, Importance, activation_importance, prune_llama
from lkd.models.router import StudentAwareRouter
from lkd.models.routing import (
    AllExperts,
    KnowledgeAugmentation,
    NoMoELayersError,
    RandomExperts,
    RankedExperts,
    Route,
    Routing,
    RoutingContext,
    RoutingRecord,
    StudentAwareGate,
    TeacherRouting,
    route_teacher,
)
from lkd.models.text_classifier import DKVBSettings, TextClassifierOutput, TransformerClassifier
from lkd.models.transfer import LayerMapError, WeightTransferError, copy_transformer_weights, evenly_spaced_layers

__all__ = [
    "MLP", "AllExperts", "Calibration", "CausalLM", "ConvNet", "DKVBOutput", "DKVBSettings", "DiscreteKeyValueBottleneck", "FeatureProjections", "Importance",
    "KnowledgeAugmentation", "LayerMapError", "NoMoELayersError", "PCAEncoder", "PretrainedLM", "PrunedLM", "RandomExperts", "RetokenizedLM", "RankedExperts",
    "Route", "Routing", "RoutingContext", "RoutingRecord", "SmolLM2", "StudentAwareGate", "StudentAwareRouter", "TeacherRouting",
    "TextClassifierOutput", "TinyLlamaLM", "TinyMoELM", "TrainedEncoder", "TransformerClassifier", "WeightTransferError",
    "activation_importance", "copy_transformer_weights", "discrete_key_init", "evenly_spaced_layers", "init_keys_from_embeddings", "prune_llama", "route_teacher",
]
