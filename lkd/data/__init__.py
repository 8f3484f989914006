from lkd.data.continual import NonStationaryMNISTDataModule
from lkd.data.glue import GLUEDataModule
from lkd.data.mnist import MNISTDataModule
from lkd.data.resolve import DatasetNotFoundError, load_hub_dataset, resolve_dataset_path

__all__ = ["DatasetNotFoundError", "GLUEDataModule", "MNISTDataModule", "NonStationaryMNISTDataModule", "load_hub_dataset", "resolve_dataset_path"]
