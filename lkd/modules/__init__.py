"""LightningModules: one base (:class:`LKDModule`) and one file per track (student + losses). Every public class is
exported here, so a YAML ``class_path`` reads ``lkd.modules.LMDistillModule``."""

from lkd.modules.base import LKDModule, ScheduleLengthError
from lkd.modules.completion_sft import CompletionSFTModule
from lkd.modules.glue import GLUEClassifierModule, GLUEDistillModule, GLUEModule
from lkd.modules.lm import CausalLMModule, LMDistillModule, LMModule, RoutedDistillModule
from lkd.modules.mnist import ClassifierModule, DistillModule, MNISTModule
from lkd.modules.on_policy import OnPolicyDistillModule
from lkd.modules.routed_teacher import RoutedTeacher, TeacherPasses
from lkd.modules.step import NonFiniteLossError, StepOutput
from lkd.modules.teaching import TeacherLifeCycle
from lkd.modules.tokenizer_pairs import BatchTokens, OneTokenizer, TwoTokenizers, VocabularyMismatchError

__all__ = ["BatchTokens", "CausalLMModule", "ClassifierModule", "CompletionSFTModule", "DistillModule", "GLUEClassifierModule", "GLUEDistillModule",
           "GLUEModule", "LKDModule", "LMDistillModule", "LMModule", "MNISTModule", "NonFiniteLossError", "OnPolicyDistillModule", "OneTokenizer",
           "RoutedDistillModule", "RoutedTeacher", "ScheduleLengthError", "StepOutput", "TeacherLifeCycle", "TeacherPasses",
           "TwoTokenizers", "VocabularyMismatchError"]
