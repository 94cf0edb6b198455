"""Command-line entry points: ``dmicro`` (train, export, calibrate, bench, devices, …) and
``dmicro-acquire``.

Each command group lives in its own module under :mod:`dmicro_hw.commands` and exposes
``register(app, bench_app)``; modules are discovered automatically so adding a command touches no
shared file. Heavy imports (torch, harvesters, OpenCV) happen inside the commands, so ``--help``
stays fast. Every user-caused error is a :class:`~dmicro_hw.errors.DmicroError`: its message is
printed in one line and the process exits with the error's code, without a traceback.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import sys

import typer
from rich.console import Console

from dmicro_hw import __version__
from dmicro_hw.errors import DmicroError

err_console = Console(stderr=True)

app = typer.Typer(
    name="dmicro",
    help="dmicro-hw: differentiable microscopy from simulation to the optical bench.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
bench_app = typer.Typer(
    help="Benchmarks: print a table and write JSON (never timed assertions).",
    no_args_is_help=True,
)
app.add_typer(bench_app, name="bench")


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"dmicro-hw {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="debug logging"),
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="print the version"
    ),
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


def _register_commands() -> None:
    import dmicro_hw.commands as commands

    for mod in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if mod.name.startswith("_"):
            continue
        module = importlib.import_module(f"dmicro_hw.commands.{mod.name}")
        module.register(app, bench_app)


_register_commands()


def _run(entry: typer.Typer, argv: list[str] | None = None, prog_name: str = "dmicro") -> int:
    try:
        # with standalone_mode=False, click returns the exit code of typer.Exit(code=…)
        rc = entry(args=argv, prog_name=prog_name, standalone_mode=False)
    except DmicroError as e:
        err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        return e.exit_code
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        err_console.print("aborted")
        return 1
    except Exception as e:
        # usage errors of the (possibly vendored) click: print the usage message, no traceback
        if hasattr(e, "show") and isinstance(getattr(e, "exit_code", None), int):
            e.show()
            return e.exit_code
        raise
    return rc if isinstance(rc, int) else 0


def main(argv: list[str] | None = None) -> None:
    """``dmicro`` console script."""
    sys.exit(_run(app, argv))


def acquire_main(argv: list[str] | None = None) -> None:
    """``dmicro-acquire`` console script (same as ``dmicro acquire``)."""
    args = list(sys.argv[1:] if argv is None else argv)
    sys.exit(_run(app, ["acquire", *args], prog_name="dmicro-acquire"))
