"""LightningDataModules and what their batches are made of. Every public class is exported here, so a YAML
``class_path`` reads ``lkd.data.TextDataModule`` (the long paths, ``lkd.data.text.TextDataModule``, still import)."""

from lkd.data.alignment import AlignedBlock, AlignmentError, Chunk
from lkd.data.arithmetic import ArithmeticPromptDataModule
from lkd.data.continual import NonStationaryMNISTDataModule, class_pair_orders
from lkd.data.glue import GLUEDataModule
from lkd.data.labels import TextLabels
from lkd.data.mnist import MNISTDataModule, TensorBatches
from lkd.data.prompts import PromptDataModule
from lkd.data.samplers import LengthGroupedSampler, SeededRandomSampler
from lkd.data.text import AlignedTokenBlocks, BlockSizeError, TextColumnError, TextDataModule, TokenBlocks
from lkd.data.text_classification import TextClassificationDataModule, TextDataError
from lkd.data.transfer import TransferTexts

__all__ = ["ArithmeticPromptDataModule", "AlignedBlock", "AlignedTokenBlocks", "AlignmentError", "BlockSizeError", "Chunk", "GLUEDataModule", "LengthGroupedSampler",
           "MNISTDataModule", "NonStationaryMNISTDataModule", "PromptDataModule", "SeededRandomSampler", "TensorBatches",
           "TextClassificationDataModule", "TextColumnError", "TextDataError", "TextDataModule", "TextLabels", "TokenBlocks",
           "TransferTexts", "class_pair_orders"]
