"""One factory for the training data: synthetic phantoms or a user folder, split three ways."""

from __future__ import annotations

from torch.utils.data import Dataset

from dmicro_hw.config import FolderDataConfig, SyntheticDataConfig


def build_datasets(
    cfg: SyntheticDataConfig | FolderDataConfig, field_size: int
) -> tuple[Dataset, Dataset, Dataset]:
    """Build (train, val, test) datasets of (field_size, field_size) float32 phase maps (rad).

    Every dataset has ``phase_max_rad`` (normalise targets with it) and ``size``. Splits never
    share a sample. Folder data raises :class:`~dmicro_hw.errors.DataError` naming the file on
    any problem; a val/test fraction of 0 gives an empty dataset.
    """
    if isinstance(cfg, SyntheticDataConfig):
        from dmicro_hw.data.synthetic import SyntheticPhaseDataset

        return tuple(  # type: ignore[return-value]
            SyntheticPhaseDataset.from_config(cfg, field_size, s) for s in ("train", "val", "test")
        )
    if isinstance(cfg, FolderDataConfig):
        from dmicro_hw.data.folder import folder_datasets

        return folder_datasets(cfg, field_size)
    raise TypeError(f"unsupported data config {type(cfg).__name__}")
