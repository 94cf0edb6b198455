"""The command line as a user meets it: one root for ``dmicro`` and ``dmicro-acquire`` (same
--version, -v/-q, --log-file), fixed choices as enums, flags without a type, shell completion,
options that cannot take effect refused, and progress as whole lines when not on a terminal."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys

import pytest

from dmicro_hw import __version__
from dmicro_hw.cli import _acquire_app, _run, app, setup_logging
from dmicro_hw.progress import LineProgress


def acquire(*args: str) -> int:
    return _run(_acquire_app(), list(args), prog_name="dmicro-acquire")


def test_dmicro_acquire_help_prints_a_usage_that_works(capsys):
    assert acquire("--help") == 0
    out = capsys.readouterr().out
    assert "Usage: dmicro-acquire [OPTIONS]" in out
    assert "<bool>" not in out  # flags take no value
    assert "<free-run|triggered>" in out and "<auto|cpu|cuda>" in out
    for opt in ("--version", "--verbose", "--quiet", "--log-file", "--install-completion"):
        assert opt in out
    assert acquire("--version") == 0 and capsys.readouterr().out.strip().endswith(__version__)
    assert _run(app, ["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"dmicro-hw {__version__}"


def test_help_of_every_command_shows_no_bool_metavar(capsys):
    for args in (["--help"], ["acquire", "--help"], ["reconstruct", "--help"], ["train", "--help"]):
        assert _run(app, args) == 0
        out = capsys.readouterr().out
        assert "<bool>" not in out, args
    assert _run(app, ["bench", "paper", "--help"]) == 0
    assert "<quick|paper-cpu|full>" in capsys.readouterr().out


def test_choices_are_checked_by_the_parser(capsys):
    assert acquire("--config", "x.yaml", "--mode", "bogus") == 2
    err = capsys.readouterr().err
    assert "Usage: dmicro-acquire [OPTIONS]" in err and "'bogus' is not one of" in err
    assert _run(app, ["reconstruct", "x", "--device", "gpu"]) == 2


def test_verbose_and_log_file_work_on_both_entry_points(tmp_path, capsys):
    log = tmp_path / "dmicro.log"
    # the config does not exist: the run stops at once, but logging was set up first
    assert acquire("-v", "--log-file", str(log), "--config", str(tmp_path / "no.yaml")) == 2
    assert logging.getLogger().level == logging.DEBUG
    logging.getLogger("dmicro_hw.test").info("hello from the test")
    assert "hello from the test" in log.read_text()
    assert _run(app, ["-q", "acquire", "--config", str(tmp_path / "no.yaml")]) == 2
    assert logging.getLogger().level == logging.ERROR
    assert acquire("-v", "-q", "--config", "x") == 2
    assert "not both" in capsys.readouterr().err
    setup_logging()  # back to the defaults (closes the log file) for the other tests
    assert logging.getLogger().level == logging.WARNING


def test_options_that_cannot_take_effect_are_errors(tmp_path, capsys):
    rig = tmp_path / "rig.yaml"
    rig.write_text("rig_id: x\n", encoding="utf-8")
    assert acquire("--config", str(rig), "--no-recon", "--preview") == 2
    assert "--preview" in capsys.readouterr().err
    assert _run(app, ["reconstruct", str(tmp_path), "--dask"]) == 2
    assert "needs --force" in capsys.readouterr().err


def test_shell_completion_completes_commands_and_choices():
    env = dict(os.environ, _DMICRO_COMPLETE="complete_bash", COMP_WORDS="dmicro recon")
    env["COMP_CWORD"] = "1"
    code = "from dmicro_hw.cli import main; main()"
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert "reconstruct" in p.stdout.split()
    env = dict(os.environ, _DMICRO_ACQUIRE_COMPLETE="complete_bash")
    env.update(COMP_WORDS="dmicro-acquire --mode ", COMP_CWORD="2")
    code = "from dmicro_hw.cli import acquire_main; acquire_main()"
    p = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert set(p.stdout.split()) == {"free-run", "triggered"}


def test_line_progress_writes_whole_lines_with_the_final_state(monkeypatch):
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    monkeypatch.setenv("DMICRO_PROGRESS_INTERVAL_S", "0")
    buf = io.StringIO()
    status = "decoded 12345 (skip 0) · " + "p50/p99 1/2 ms · " * 10  # longer than any terminal
    with LineProgress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
        out=buf,
    ) as p:
        t = p.add_task("optics 1/2", total=3, status="")
        for _ in range(3):
            p.update(t, advance=1, status=status)
        p.update(t, description="optics 1/2 val SSIM 0.9")  # after the end: in its final line
        p.add_task("optics 2/2", total=3, status="")
    lines = buf.getvalue().splitlines()
    assert lines[0].split(" ", 1)[1].startswith("optics 1/2 33% 1/3 elapsed 0:00:00")
    finals = [ln for ln in lines if "3/3" in ln]
    assert len(finals) == 1 and "val SSIM 0.9" in finals[0] and finals[0].endswith("ms ·")
    assert all("[bold]" not in ln for ln in lines)


@pytest.mark.parametrize("quiet", [True])
def test_quiet_hides_progress_lines(quiet, monkeypatch):
    from dmicro_hw.progress import set_quiet

    monkeypatch.setenv("DMICRO_PROGRESS_INTERVAL_S", "0")
    buf = io.StringIO()
    set_quiet(quiet)
    try:
        with LineProgress(out=buf) as p:
            p.update(p.add_task("x", total=2), advance=2)
    finally:
        set_quiet(False)
    assert buf.getvalue() == ""
