"""Torch dataset of synthetic cell phantoms with non-overlapping train/val/test splits."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from dmicro_hw.config import SyntheticDataConfig
from dmicro_hw.data.phantoms import generate_cells

Split = Literal["train", "val", "test"]
SPLIT_STREAMS: dict[str, int] = {"train": 0, "val": 1, "test": 2}


class SyntheticPhaseDataset(Dataset):
    """``n`` cell phantoms of one split; item ``i`` is a float32 tensor (size, size) in radians.

    Each split draws from its own random stream (train 0, val 1, test 2) of ``seed``, so the
    splits never share a sample and a split does not change when another split's size changes.
    Samples are generated on first access and cached (``cache=True``), or all at once at
    construction (``precompute=True``, one vectorised call — fastest for small sets).

    Attributes:
        size: N of the N×N fields.
        phase_max_rad: every sample has background 0 and maximum exactly this value.
        split, seed, stream: where the samples come from.
    """

    def __init__(
        self,
        n: int,
        size: int,
        phase_max_rad: float = math.pi,
        seed: int = 0,
        split: Split = "train",
        *,
        cache: bool = True,
        precompute: bool = False,
    ) -> None:
        if split not in SPLIT_STREAMS:
            raise ValueError(f"split must be one of {list(SPLIT_STREAMS)}, got {split!r}")
        self.n = int(n)
        self.size = int(size)
        self.phase_max_rad = float(phase_max_rad)
        self.seed = int(seed)
        self.split = split
        self.stream = SPLIT_STREAMS[split]
        self.cache = cache
        self._cache: dict[int, np.ndarray] = {}
        self._all: np.ndarray | None = None
        if precompute:
            self._all = self._generate(0, self.n)

    @classmethod
    def from_config(
        cls, cfg: SyntheticDataConfig, size: int, split: Split, **kwargs: bool
    ) -> SyntheticPhaseDataset:
        n = {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test}[split]
        return cls(n, size, cfg.phase_max_rad, cfg.seed, split, **kwargs)

    def _generate(self, start: int, n: int) -> np.ndarray:
        return generate_cells(
            n, self.size, self.phase_max_rad, self.seed, start=start, stream=self.stream
        )

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> torch.Tensor:
        i = int(index)
        if i < 0:
            i += self.n
        if not 0 <= i < self.n:
            raise IndexError(f"index {index} out of range for {self.n} samples")
        if self._all is not None:
            return torch.from_numpy(self._all[i])
        phi = self._cache.get(i)
        if phi is None:
            phi = self._generate(i, 1)[0]
            if self.cache:
                self._cache[i] = phi
        return torch.from_numpy(phi)

    def as_tensor(self) -> torch.Tensor:
        """All samples as one float32 tensor (n, size, size) in radians (generated if needed)."""
        if self._all is None:
            self._all = self._generate(0, self.n)
            self._cache.clear()
        return torch.from_numpy(self._all)

    def __repr__(self) -> str:
        return (
            f"SyntheticPhaseDataset(split={self.split}, n={self.n}, size={self.size}, "
            f"phase_max_rad={self.phase_max_rad:.4g}, seed={self.seed})"
        )
