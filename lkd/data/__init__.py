from lkd.data.mnist import MNISTDataModule
from lkd.data.resolve import DatasetNotFoundError, load_hub_dataset, resolve_dataset_path

__all__ = ["DatasetNotFoundError", "MNISTDataModule", "load_hub_dataset", "resolve_dataset_path"]
