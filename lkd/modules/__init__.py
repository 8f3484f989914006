"""LightningModules: one base (:class:`LKDModule`) and one file per track (student + losses)."""

from lkd.modules.base import LKDModule, NonFiniteLossError, StepOutput
from lkd.modules.glue import GLUEClassifierModule, GLUEDistillModule
from lkd.modules.lm import CausalLMModule, LMDistillModule
from lkd.modules.mnist import ClassifierModule, DistillModule
from lkd.modules.tokenizer_pairs import VocabularyMismatchError

__all__ = ["CausalLMModule", "ClassifierModule", "DistillModule", "GLUEClassifierModule", "GLUEDistillModule", "LKDModule",
           "LMDistillModule", "NonFiniteLossError", "StepOutput", "VocabularyMismatchError"]
