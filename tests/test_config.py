"""Config loading: safe YAML, unknown keys rejected, one readable message naming file and key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dmicro_hw.config import RigConfig, TrainConfig, load_rig_config, load_train_config
from dmicro_hw.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_are_valid_and_paper_like():
    t = TrainConfig()
    assert t.optics.field_size == 256 and t.optics.pixel_size_m == pytest.approx(316.4e-9)
    assert t.optics.wavelength_m == pytest.approx(632.8e-9) and t.optics.binning == 8
    assert RigConfig().slm.backend == "sim"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    if path.name.startswith("train"):
        load_train_config(path)
    else:
        load_rig_config(path)


def test_unknown_key_is_named(tmp_path):
    p = write(tmp_path, "optics:\n  wavelenght_m: 5.0e-7\n")
    with pytest.raises(ConfigError) as e:
        load_train_config(p)
    msg = str(e.value)
    assert str(p) in msg and "optics.wavelenght_m" in msg and "unknown key" in msg


def test_out_of_range_and_literal_values(tmp_path):
    with pytest.raises(ConfigError, match=r"optics\.compression: must be one of"):
        load_train_config(write(tmp_path, "optics:\n  compression: 32\n"))
    with pytest.raises(ConfigError, match=r"sensor\.bit_depth"):
        load_rig_config(write(tmp_path, "sensor:\n  bit_depth: 40\n"))
    with pytest.raises(ConfigError, match="divisible"):
        load_train_config(write(tmp_path, "optics:\n  field_size: 100\n  compression: 64\n"))
    with pytest.raises(ConfigError, match=r"acquisition\.decoder_runtime: must be one of"):
        load_rig_config(write(tmp_path, "acquisition:\n  decoder_runtime: fastest\n"))
    rig = load_rig_config(write(tmp_path, "acquisition:\n  decoder_runtime: eager\n"))
    assert rig.acquisition.decoder_runtime == "eager"
    assert RigConfig().acquisition.decoder_runtime == "auto"


def test_bad_yaml_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_rig_config(write(tmp_path, "optics: [1, 2\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_rig_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="mapping"):
        load_rig_config(write(tmp_path, "- 1\n- 2\n"))


def test_yaml_is_loaded_safely(tmp_path):
    p = write(tmp_path, "rig_id: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_rig_config(p)


def test_relative_paths_resolve_against_the_config_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "model.pt").write_bytes(b"x")
    rig = load_rig_config(write(tmp_path / "sub", "checkpoint: model.pt\n", "rig.yaml"))
    assert rig.checkpoint == (tmp_path / "sub" / "model.pt").resolve()


def test_cli_reports_config_error_in_one_line_without_traceback(tmp_path):
    p = write(tmp_path, "optics:\n  pupil_radius: -1\n")
    code = "from dmicro_hw.cli import main; main()"
    r = subprocess.run(
        [sys.executable, "-c", code, "train", "--config", str(p)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert "optics.pupil_radius" in r.stderr and str(p) in r.stderr.replace("\n", "")
