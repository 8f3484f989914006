from lkd.data.continual import NonStationaryMNISTDataModule
from lkd.data.glue import GLUEDataModule
from lkd.data.mnist import MNISTDataModule

__all__ = ["GLUEDataModule", "MNISTDataModule", "NonStationaryMNISTDataModule"]
