"""Fine-tune a trained checkpoint's decoder, optionally with another output head, at equal budget.

Used to compare decoder heads at the accuracy level of a finished model (README "Decoder speed"):
both runs start from the same checkpoint (optics, input standardisation and every decoder weight
whose name and shape match), see the same data and take the same optimiser steps; a new head
(``--head-shuffle`` other than the checkpoint's) starts from its default initialisation.

    python scripts/decoder_warmstart.py configs/assets/paper-x64.pt --head-shuffle 1 -o runs/ws-s1
    python scripts/decoder_warmstart.py configs/assets/paper-x64.pt --head-shuffle 4 -o runs/ws-s4

Writes OUT/best.pt, OUT/summary.json (test PSNR/SSIM of the checkpoint's own test split).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--head-shuffle", type=int, required=True)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--loss", default="ssim_l1", choices=["l1", "ssim_l1", "mse"])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--n-train", type=int, default=None, help="default: the checkpoint's")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-o", "--out", type=Path, required=True)
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    import torch

    from dmicro_hw.config import StageConfig
    from dmicro_hw.training.checkpoint import build_model_from_checkpoint, checkpoint_config
    from dmicro_hw.training.trainer import Trainer

    torch.set_num_threads(a.threads)
    src, _ = build_model_from_checkpoint(a.checkpoint)
    cfg = checkpoint_config(a.checkpoint)
    data = cfg.data if a.n_train is None else cfg.data.model_copy(update={"n_train": a.n_train})
    stage = StageConfig(name="decoder", epochs=a.epochs, lr=a.lr, batch_size=a.batch, loss=a.loss)
    cfg = cfg.model_copy(
        update={
            "decoder": cfg.decoder.model_copy(update={"head_shuffle": a.head_shuffle}),
            "data": data,
            "stages": [stage],
            "out_dir": a.out,
        }
    )
    trainer = Trainer(cfg, out_dir=a.out, device="cpu")
    m = trainer.model
    m.encoder.load_state_dict(src.encoder.state_dict())
    own = m.decoder.state_dict()
    same = {
        k: v for k, v in src.decoder.state_dict().items() if k in own and own[k].shape == v.shape
    }
    m.decoder.load_state_dict(same, strict=False)
    fresh = sorted(set(own) - set(same))
    logging.info("decoder: %d tensors from the checkpoint, new: %s", len(same), fresh)
    before = trainer.evaluate("test")
    t0 = time.perf_counter()
    trainer.fit()
    train_s = time.perf_counter() - t0
    after = trainer.evaluate("test")
    summary = {
        "from": str(a.checkpoint),
        "head_shuffle": a.head_shuffle,
        "stage": stage.model_dump(),
        "n_train": data.n_train,
        "new_tensors": fresh,
        "test_before": before,
        "test_after": after,
        "train_s": round(train_s, 1),
    }
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    logging.info("test before %s after %s (%.0f s)", before, after, train_s)


if __name__ == "__main__":
    main()
