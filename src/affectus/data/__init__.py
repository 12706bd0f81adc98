"""Data layer: readers, presets, the conflict simulator and batching."""

from affectus.data.types import MODALITIES, MERDataset, Split

__all__ = ["MODALITIES", "MERDataset", "Split"]
