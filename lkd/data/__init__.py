from lkd.data.continual import NonStationaryMNISTDataModule
from lkd.data.glue import GLUEDataModule
from lkd.data.mnist import MNISTDataModule
from lkd.data.text_classification import TextClassificationDataModule, TextDataError

__all__ = ["GLUEDataModule", "MNISTDataModule", "NonStationaryMNISTDataModule", "TextClassificationDataModule", "TextDataError"]
