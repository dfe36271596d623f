"""Data-loader workers that live across epochs while the dataset's per-epoch settings still change.

With ``persistent_workers`` each worker keeps its own copy of the dataset, so settings changed on
the main process's dataset between epochs (``set_epoch``, the augmentation probability, the
lesion-slice rate) would never reach it. Here the sampler, which runs in the main process every
epoch, sends those settings along with each index, and the dataset wrapper applies them in the
worker before it loads the sample: same samples as restarting the workers, without the restart.
"""
from __future__ import annotations

from typing import Iterator

from torch.utils.data import Dataset, Sampler

# Attributes of SliceTrainingDataset / ImageTrainingDataset that the trainer changes per epoch.
EPOCH_SETTINGS = ("epoch", "augmentation_probability", "positive_class_sample_rate")


class EpochSettingsSampler(Sampler):
    """Yields ``(index, settings)``: the wrapped sampler's indices with ``dataset``'s current
    per-epoch settings, read when the epoch's iteration starts."""

    def __init__(self, sampler: Sampler, dataset: Dataset):
        self.sampler = sampler
        self.dataset = dataset

    def __iter__(self) -> Iterator[tuple[int, tuple]]:
        settings = tuple((name, getattr(self.dataset, name)) for name in EPOCH_SETTINGS if hasattr(self.dataset, name))
        return ((index, settings) for index in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


class EpochSettingsDataset(Dataset):
    """Applies the settings an :class:`EpochSettingsSampler` sent, then returns ``dataset[index]``."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, tuple]):
        index, settings = item
        for name, value in settings:
            setattr(self.dataset, name, value)
        return self.dataset[index]
