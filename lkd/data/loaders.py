"""The four stage loaders of a data module, and the cache's batches, from one ``_loader(split, shuffle)``."""

from __future__ import annotations

from torch.utils.data import DataLoader


class SplitLoaders:
    """Mixed into a LightningDataModule (before it) whose ``_loader(split, shuffle)`` builds a split's DataLoader:
    training shuffled, the others (and a teacher cache's batches, in order) not; ``predict`` reads ``test``."""

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        raise NotImplementedError

    def cache_batches(self, stage: str):
        """The split's batches in order, unaugmented, before device transfer (what a teacher cache stores)."""
        return self._loader(stage, shuffle=False)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
