"""The sub-pixel decoder head, the decoder runtimes and how the reconstruction worker picks one,
and ``dmicro bench decoders`` on a tiny checkpoint (no timings asserted)."""

from __future__ import annotations

import json

import pytest
import torch

from dmicro_hw.config import DecoderConfig, OpticsConfig, SyntheticDataConfig, TrainConfig
from dmicro_hw.errors import ConfigError
from dmicro_hw.models import build_decoder
from dmicro_hw.models.unet import UNetDecoder

onnxruntime = pytest.importorskip("onnxruntime")  # the [onnx] extra, in the test install


def _randomised(m: torch.nn.Module) -> torch.nn.Module:
    """Untrained decoders start with zeroed last convs; give every weight a value."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return m.eval()


@pytest.mark.parametrize("r", [1, 2, 4, 8])
def test_sub_pixel_head_shapes_and_gradients(r):
    m = UNetDecoder(8, base_channels=8, depth=2, normalize_input=False, head_shuffle=r)
    x = torch.randn(3, 12, 10, requires_grad=True)  # not a multiple of 2**depth: padded, cropped
    y = m(x)
    assert y.shape == (3, 96, 80)
    y.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    grads = {n: p.grad for n, p in m.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    head_w = m.head.weight if r == 1 else m.head[0].weight
    assert head_w.shape[0] == r * r and head_w.grad.abs().sum() > 0
    # no convolution runs at full resolution unless r == 1: count the full-size conv outputs
    full = []
    for mod in m.modules():
        if isinstance(mod, torch.nn.Conv2d):
            mod.register_forward_hook(lambda _m, _i, o: full.append(o.shape[-1] == 80))
    m(torch.randn(1, 12, 10))
    assert any(full) == (r == 1)


def test_head_shuffle_is_checked():
    with pytest.raises(ValueError, match="head_shuffle"):
        UNetDecoder(4, head_shuffle=8)
    with pytest.raises(ConfigError, match="decoder.head_shuffle"):
        build_decoder(DecoderConfig(head_shuffle=3), binning=8)
    with pytest.raises(ConfigError, match="decoder.head_shuffle"):
        build_decoder(DecoderConfig(head_shuffle=16), binning=8)
    # the default keeps today's module names (old checkpoints load strictly)
    old = build_decoder(DecoderConfig(base_channels=8, depth=2), binning=4)
    assert isinstance(old.head, torch.nn.Conv2d)


def test_onnx_runtime_matches_eager_and_is_cached(tmp_path):
    from dmicro_hw.models.runtime import build_runtime

    m = _randomised(UNetDecoder(4, base_channels=8, depth=2, normalize_input=False, head_shuffle=2))
    x = torch.rand(5, 16, 16)
    with torch.inference_mode():
        ref = m(x)
    rt = build_runtime("onnx", m, (16, 16), cache_dir=tmp_path, threads=1)
    assert not rt.cached and rt.artifact.is_file()
    assert (rt(x) - ref).abs().max() < 1e-4
    again = build_runtime("onnx", m, (16, 16), cache_dir=tmp_path, threads=1)
    assert again.cached and again.artifact == rt.artifact
    # a cache entry that is a symlink is never followed: rebuilt in its place
    target = tmp_path / "elsewhere.onnx"
    rt.artifact.rename(target)
    rt.artifact.symlink_to(target)
    rebuilt = build_runtime("onnx", m, (16, 16), cache_dir=tmp_path, threads=1)
    assert not rebuilt.cached and not rebuilt.artifact.is_symlink()
    # other weights → another cache entry
    with torch.no_grad():
        m.head[0].bias.add_(1.0)
    other = build_runtime("onnx", m, (16, 16), cache_dir=tmp_path, threads=1)
    assert other.artifact != rt.artifact and not other.cached


def test_int8_and_unavailable_runtimes(tmp_path):
    from dmicro_hw.models.runtime import RuntimeUnavailable, build_runtime

    m = _randomised(UNetDecoder(4, base_channels=8, depth=2, normalize_input=False, head_shuffle=2))
    x = torch.rand(8, 16, 16)
    rt = build_runtime("onnx-int8", m, (16, 16), cache_dir=tmp_path, threads=1, calibration=x)
    assert rt(x).shape == (8, 64, 64)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeUnavailable, match="CUDA"):
            build_runtime("cuda-graph", m, (16, 16))
    with pytest.raises(ValueError, match="unknown decoder runtime"):
        build_runtime("tensorrt", m, (16, 16))


def _tiny_model(head_shuffle: int = 2):
    from dmicro_hw.training.model import DMicroModel

    torch.manual_seed(0)
    cfg = TrainConfig(
        optics=OpticsConfig(field_size=64, compression=16, focal_length_m=0.0246),
        decoder=DecoderConfig(base_channels=8, depth=2, head_shuffle=head_shuffle),
        data=SyntheticDataConfig(n_train=4, n_val=2, n_test=8),
    )
    model = DMicroModel.from_config(cfg)
    _randomised(model.decoder)
    return model, cfg


def test_worker_uses_an_accurate_runtime_and_falls_back_on_mismatch(tmp_path, monkeypatch, caplog):
    import numpy as np

    from dmicro_hw.acquisition.reconstruct import Reconstructor
    from dmicro_hw.models import runtime as R

    model, cfg = _tiny_model()
    eager = Reconstructor(model, cfg.sensor, device="cpu", max_batch=4)
    raw = eager._probe_frames(4)
    ref = eager(raw)
    rec = Reconstructor(
        model, cfg.sensor, device="cpu", max_batch=4, runtime="onnx", runtime_cache=tmp_path
    )
    assert rec.info()["decoder_runtime"] == "onnx", rec.runtime_report
    assert np.abs(rec(raw) - ref).max() < 1e-4

    real = R._BUILDERS["onnx"]

    def off_by_a_bit(*a, **kw):  # an export that changed the numbers
        rt = real(*a, **kw)
        fn = rt.fn
        rt.fn = lambda x: fn(x) + 0.01
        return rt

    monkeypatch.setitem(R._BUILDERS, "onnx", off_by_a_bit)
    caplog.set_level("INFO", logger="dmicro_hw.models.runtime")
    bad = Reconstructor(
        model, cfg.sensor, device="cpu", max_batch=4, runtime="auto", runtime_cache=tmp_path
    )
    info = bad.info()
    assert info["decoder_runtime"] == "eager"
    assert "onnx rejected: max |Δ| 1.0" in info["decoder_runtime_reason"]
    assert "compiled not built" in info["decoder_runtime_reason"]
    assert "onnx rejected" in caplog.text
    assert np.abs(bad(raw) - ref).max() < 1e-4  # eager (channels_last) = the plain decoder

    def missing(*a, **kw):
        raise R.RuntimeUnavailable("onnxruntime is not installed")

    monkeypatch.setitem(R._BUILDERS, "onnx", missing)
    gone = Reconstructor(model, cfg.sensor, device="cpu", runtime="onnx", runtime_cache=tmp_path)
    assert gone.info()["decoder_runtime"] == "eager"
    assert "not installed" in gone.info()["decoder_runtime_reason"]
    with pytest.raises(ConfigError, match="decoder runtime"):
        Reconstructor(model, cfg.sensor, device="cpu", runtime="fastest")


def test_bench_decoders_cli(tmp_path, cli):
    from dmicro_hw.training.checkpoint import save_checkpoint

    cks = []
    for r in (1, 2):
        model, cfg = _tiny_model(r)
        cks += ["-c", str(save_checkpoint(tmp_path / f"s{r}.pt", model, cfg))]
    out = tmp_path / "bench.json"
    res = cli(
        "bench", "decoders", *cks, "--runtimes", "eager,onnx,cuda-graph", "--batch", "3",
        "--rounds", "2", "--frames", "5", "--threads", "1", "--cache", tmp_path / "c", "-o", out,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    assert "sub-pixel head ×2" in res.stdout and "other processes" in res.stdout
    doc = json.loads(out.read_text())
    rows = {(r["checkpoint"].rsplit("/", 1)[-1], r["runtime"]): r for r in doc["rows"]}
    assert set(rows) == {
        (f"s{r}.pt", n) for r in (1, 2) for n in ("eager-nchw", "eager", "onnx", "cuda-graph")
    }
    for (_, name), r in rows.items():
        if name == "cuda-graph" and not torch.cuda.is_available():
            assert r["status"].startswith("skipped: no CUDA") and r["fps"] is None
            continue
        assert r["status"] == "ok" and r["fps"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0
        assert abs(r["dpsnr_db"]) < 1e-3 and r["max_abs_err"] < 1e-4
    assert doc["meta"]["load"]["cpus"] >= 1 and "load_avg" in doc["meta"]["load"]
    bad = cli("bench", "decoders", *cks[:2], "--runtimes", "eager,tensorrt", "-o", out)
    assert bad.returncode != 0 and "tensorrt" in bad.stdout + bad.stderr
