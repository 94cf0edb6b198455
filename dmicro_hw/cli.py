"""Command-line entry points: ``dmicro`` (train, export, calibrate, bench, devices, …) and
``dmicro-acquire``.

Each command group lives in its own module under :mod:`dmicro_hw.commands` and exposes
``register(app, bench_app)``; modules are discovered automatically so adding a command touches no
shared file. Heavy imports (torch, harvesters, OpenCV) happen inside the commands, so ``--help``
stays fast. Every user-caused error is a :class:`~dmicro_hw.errors.DmicroError`: its message is
printed in one line and the process exits with the error's code, without a traceback.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import pkgutil
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console

from dmicro_hw import __version__
from dmicro_hw.errors import ConfigError, DmicroError

err_console = Console(stderr=True)

app = typer.Typer(
    name="dmicro",
    help="dmicro-hw: differentiable microscopy from simulation to the optical bench.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)
bench_app = typer.Typer(
    help="Benchmarks: print a table and write JSON (never timed assertions).",
    no_args_is_help=True,
)
app.add_typer(bench_app, name="bench")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"dmicro-hw {__version__}")
        raise typer.Exit()


class _StderrHandler(logging.StreamHandler):
    """Logs to whatever ``sys.stderr`` is now (not the stream it was at set-up)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def setup_logging(verbose: bool = False, quiet: bool = False, log_file: Path | None = None) -> None:
    """Log level of the console (stderr): WARNING, DEBUG with ``-v``, ERROR with ``-q`` (which
    also hides progress); ``--log-file`` adds a file that gets everything from INFO (DEBUG
    with ``-v``) on, whatever the console shows."""
    from dmicro_hw.progress import set_quiet

    if verbose and quiet:
        raise ConfigError("give either -v/--verbose or -q/--quiet, not both")
    set_quiet(quiet)
    level = logging.DEBUG if verbose else logging.ERROR if quiet else logging.WARNING
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_dmicro", False):
            root.removeHandler(h)
            h.close()
    console = _StderrHandler()
    console.setLevel(level)
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    console._dmicro = True  # type: ignore[attr-defined]
    root.addHandler(console)
    root.setLevel(level)
    if log_file is not None:
        log_file = Path(log_file)
        if log_file.is_symlink():
            raise ConfigError(f"--log-file {log_file}: is a symbolic link; refusing to write")
        try:
            fh = logging.FileHandler(log_file, encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"--log-file {log_file}: cannot open ({e.strerror})") from None
        file_level = logging.DEBUG if verbose else logging.INFO
        fh.setLevel(file_level)
        fh.setFormatter(logging.Formatter(LOG_FORMAT))
        fh._dmicro = True  # type: ignore[attr-defined]
        root.addHandler(fh)
        root.setLevel(min(level, file_level))


#: the options every entry point takes (``dmicro …`` and ``dmicro-acquire``): name →
#: (annotation, typer.Option)
COMMON_OPTIONS: dict[str, tuple[Any, Any]] = {
    "verbose": (bool, typer.Option(False, "--verbose", "-v", help="debug logging")),
    "quiet": (bool, typer.Option(False, "--quiet", "-q", help="errors only, no progress")),
    "log_file": (
        Optional[Path],  # noqa: UP045 - evaluated by typer at run time (py3.10 too)
        typer.Option(
            None, "--log-file", dir_okay=False, help="also write the log (INFO, -v: DEBUG) here"
        ),
    ),
    "version": (
        bool,
        typer.Option(
            False,
            "--version",
            callback=_version_callback,
            is_eager=True,
            help="print the version and exit",
        ),
    ),
}


def with_common_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with :data:`COMMON_OPTIONS` added to its options (set up before it runs)."""
    sig = inspect.signature(fn)
    extra = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=ann)
        for name, (ann, opt) in COMMON_OPTIONS.items()
    ]

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        common = {k: kwargs.pop(k) for k in COMMON_OPTIONS}
        setup_logging(common["verbose"], common["quiet"], common["log_file"])
        return fn(*args, **kwargs)

    hints = typing.get_type_hints(fn)
    params = [
        p.replace(annotation=hints.get(p.name, p.annotation)) for p in sig.parameters.values()
    ]
    wrapper.__signature__ = sig.replace(parameters=[*params, *extra])  # type: ignore[attr-defined]
    wrapper.__annotations__ = {
        **hints,
        **{k: ann for k, (ann, _) in COMMON_OPTIONS.items()},
    }
    del wrapper.__wrapped__  # typer must see the merged signature, not fn's
    return wrapper


@app.callback()
def _root(
    verbose: bool = COMMON_OPTIONS["verbose"][1],
    quiet: bool = COMMON_OPTIONS["quiet"][1],
    log_file: Optional[Path] = COMMON_OPTIONS["log_file"][1],  # noqa: UP045
    version: bool = COMMON_OPTIONS["version"][1],
) -> None:
    setup_logging(verbose, quiet, log_file)


def _register_commands() -> None:
    import dmicro_hw.commands as commands

    for mod in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if mod.name.startswith("_"):
            continue
        module = importlib.import_module(f"dmicro_hw.commands.{mod.name}")
        module.register(app, bench_app)


_register_commands()


def _acquire_app() -> typer.Typer:
    """``dmicro-acquire``: the ``acquire`` command of :data:`app` as a program of its own, with
    the root options (``--version``, ``-v/-q``, ``--log-file``) and shell completion."""
    cmd = next(c for c in app.registered_commands if c.name == "acquire")
    acq = typer.Typer(
        name="dmicro-acquire",
        add_completion=True,
        pretty_exceptions_enable=False,
    )
    acq.command(help=cmd.callback.__doc__)(with_common_options(cmd.callback))
    return acq


def _plain_flags(cmd: Any) -> Any:
    """Flags take no value: show no ``<bool>`` type for them in ``--help``."""
    for p in getattr(cmd, "params", []):
        if getattr(p, "is_flag", False) and getattr(p, "metavar", None) is None:
            p.metavar = ""
    get_help_option = cmd.get_help_option

    def help_option(ctx: Any) -> Any:
        opt = get_help_option(ctx)
        if opt is not None and opt.metavar is None:
            opt.metavar = ""
        return opt

    cmd.get_help_option = help_option
    for sub in getattr(cmd, "commands", {}).values():
        _plain_flags(sub)
    return cmd


def _run(entry: typer.Typer, argv: list[str] | None = None, prog_name: str = "dmicro") -> int:
    try:
        command = _plain_flags(typer.main.get_command(entry))
        # with standalone_mode=False, click returns the exit code of typer.Exit(code=…)
        rc = command(args=argv, prog_name=prog_name, standalone_mode=False)
    except DmicroError as e:
        err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        return e.exit_code
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130
    except OSError as e:
        # the file system refused (disk full, permissions, a file where a folder should be):
        # one line naming the path, as for every other user-side error
        where = f"{e.filename}: " if e.filename else ""
        err_console.print(
            f"[bold red]error:[/] {where}{e.strerror or e}", highlight=False, soft_wrap=True
        )
        return 1
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
    """``dmicro-acquire`` console script (same as ``dmicro acquire``, same root options)."""
    sys.exit(_run(_acquire_app(), argv, prog_name="dmicro-acquire"))
