"""Torch datasets of generated phantoms (one family, or a mixture) with disjoint splits."""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from dmicro_hw.config import MixtureDataConfig, SyntheticDataConfig
from dmicro_hw.data.families import draw_family
from dmicro_hw.data.phantoms import generate_cells, sample_rng

Split = Literal["train", "val", "test"]
SPLIT_STREAMS: dict[str, int] = {"train": 0, "val": 1, "test": 2}


class GeneratedPhaseDataset(Dataset):
    """``n`` generated phase maps of one split; item ``i`` is a float32 tensor (size, size), rad.

    Each split draws from its own random stream (train 0, val 1, test 2) of ``seed``, so the
    splits never share a sample and a split does not change when another split's size changes.
    Samples are generated on first access and cached (``cache=True``), or all at once at
    construction (``precompute=True``). Subclasses implement :meth:`_generate`.

    Attributes:
        size: N of the N×N fields.
        phase_max_rad: every sample lies in [0, phase_max_rad].
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
        stream: int | None = None,
    ) -> None:
        if split not in SPLIT_STREAMS:
            raise ValueError(f"split must be one of {list(SPLIT_STREAMS)}, got {split!r}")
        self.n = int(n)
        self.size = int(size)
        self.phase_max_rad = float(phase_max_rad)
        self.seed = int(seed)
        self.split = split
        self.stream = SPLIT_STREAMS[split] if stream is None else int(stream)
        self.cache = cache
        self._cache: dict[int, np.ndarray] = {}
        self._all: np.ndarray | None = None
        if precompute:
            self._all = self._generate(0, self.n)

    def _generate(self, start: int, n: int) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

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
            f"{type(self).__name__}(split={self.split}, n={self.n}, size={self.size}, "
            f"phase_max_rad={self.phase_max_rad:.4g}, seed={self.seed})"
        )


class SyntheticPhaseDataset(GeneratedPhaseDataset):
    """One phantom family (default: cells); every sample spans exactly [0, phase_max_rad]."""

    def __init__(
        self, *args: Any, family: str = "cells", options: dict | None = None, **kwargs: Any
    ) -> None:
        self.family = family
        self.options = dict(options or {})
        super().__init__(*args, **kwargs)

    @classmethod
    def from_config(
        cls, cfg: SyntheticDataConfig, size: int, split: Split, **kwargs: Any
    ) -> SyntheticPhaseDataset:
        n = {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test}[split]
        return cls(
            n,
            size,
            cfg.phase_max_rad,
            cfg.seed,
            split,
            family=cfg.family,
            options=cfg.options,
            **kwargs,
        )

    def _generate(self, start: int, n: int) -> np.ndarray:
        if self.family == "cells" and not self.options:  # the original cell stream, unchanged
            return generate_cells(
                n, self.size, self.phase_max_rad, self.seed, start=start, stream=self.stream
            )
        out = np.empty((n, self.size, self.size), dtype=np.float32)
        for j in range(n):
            rng = sample_rng(self.seed, start + j, self.stream)
            out[j] = draw_family(self.family, rng, self.size, self.options) * self.phase_max_rad
        return out


class MixturePhaseDataset(GeneratedPhaseDataset):
    """Samples of a :class:`~dmicro_hw.config.MixtureDataConfig` (see dmicro_hw.data.mixture)."""

    def __init__(self, cfg: MixtureDataConfig, size: int, split: Split = "train", **kwargs: Any):
        from dmicro_hw.data.mixture import Mixture

        self.mixture = Mixture(cfg, size, split)
        n = {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test}[split]
        super().__init__(n, size, cfg.phase_max_rad, cfg.seed, split, **kwargs)

    def _generate(self, start: int, n: int) -> np.ndarray:
        out = np.empty((n, self.size, self.size), dtype=np.float32)
        for j in range(n):
            out[j] = self.mixture.sample(sample_rng(self.seed, start + j, self.stream))
        return out
