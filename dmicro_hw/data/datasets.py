"""One factory for the training data: phantoms, a mixture or a user folder, split three ways."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from dmicro_hw.config import DataConfigAny as DataConfig
from dmicro_hw.config import FolderDataConfig, MixtureDataConfig, SyntheticDataConfig


def build_datasets(cfg: DataConfig, field_size: int) -> tuple[Dataset, Dataset, Dataset]:
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
    if isinstance(cfg, MixtureDataConfig):
        from dmicro_hw.data.synthetic import MixturePhaseDataset

        return tuple(  # type: ignore[return-value]
            MixturePhaseDataset(cfg, field_size, s) for s in ("train", "val", "test")
        )
    if isinstance(cfg, FolderDataConfig):
        from dmicro_hw.data.folder import folder_datasets

        return folder_datasets(cfg, field_size)
    raise TypeError(f"unsupported data config {type(cfg).__name__}")


def draw_samples(cfg: DataConfig, field_size: int, n: int, stream: int) -> torch.Tensor:
    """``n`` phase maps (n, N, N) float32 rad from the distribution a data config describes,
    drawn from an extra random ``stream`` (≥ 3: never a train/val/test sample of generated data).

    Used where a model is fine-tuned after training (decoder adaptation to a calibrated rig), so
    that it keeps seeing what it was trained on. A folder gives its training split (cycled).
    """
    if isinstance(cfg, FolderDataConfig):
        from dmicro_hw.data.folder import folder_datasets

        train = folder_datasets(cfg, field_size)[0]
        return torch.stack([train[i % len(train)] for i in range(n)])
    if isinstance(cfg, MixtureDataConfig):
        from dmicro_hw.data.synthetic import MixturePhaseDataset

        ds = MixturePhaseDataset(cfg.model_copy(update={"n_train": n}), field_size, stream=stream)
    else:
        from dmicro_hw.data.synthetic import SyntheticPhaseDataset

        ds = SyntheticPhaseDataset.from_config(
            cfg.model_copy(update={"n_train": n}), field_size, "train", stream=stream
        )
    return ds.as_tensor()
