"""The ``skinlesion`` command: ``app`` (typer) and ``main`` (one sentence and exit 2 for a user error, never a traceback).

The verbs live by group, each importing its heavy libraries (torch, timm, streamlit, fastapi) inside the verb:

- :mod:`skinlesion.cli.data`     info, split, audit, download, prepare
- :mod:`skinlesion.cli.train`    train, evaluate, export, card
- :mod:`skinlesion.cli.predict`  predict
- :mod:`skinlesion.cli.serve`    app, serve
- :mod:`skinlesion.study.cli`    study create / invite / report
- :mod:`skinlesion.cli.common`   the console, the progress bar, atomic CSV writes
"""

from __future__ import annotations

import os
import sys
from typing import List, Optional

import typer
import typer.exceptions

from ..errors import SkinLesionError
from . import data, predict, serve, train
from .common import _progress, _say, _warn, write_csv  # noqa: F401  (imported from here by tests and tools)
from .predict import read_meta_csv  # noqa: F401
from .serve import _app_port, _port_free  # noqa: F401

app = typer.Typer(
    help="Classify dermatoscopic images into the seven HAM10000 diagnoses.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# the verbs, in the order --help lists them
for _verb in (data.info, data.split, data.audit, data.download, train.train, train.evaluate, predict.predict, train.export, train.card):
    app.command()(_verb)
app.command(name="app")(serve.app_cmd)
app.command()(serve.serve)
app.command()(data.prepare)

app.add_typer(__import__("skinlesion.study.cli", fromlist=["app"]).app, name="study")  # skinlesion study create/invite/report


def _click_exceptions():
    """(ClickException, Abort) classes of click and of the click that typer may vendor (typer._click, typer >= 0.28)."""
    import click

    usage, abort = [click.exceptions.ClickException], [click.exceptions.Abort]
    try:
        from typer._click import exceptions as vendored

        usage.append(vendored.ClickException)
    except ImportError:
        pass
    abort += [c for c in (getattr(typer, "Abort", None), getattr(typer.exceptions, "Abort", None)) if isinstance(c, type)]
    return tuple(usage), tuple(abort)


def _say_interrupted() -> None:
    """Ctrl-C: "interrupted", and how to continue when the run said so (typer and click drop the exception itself)."""
    from ..errors import Interrupted

    typer.echo(f"interrupted; {Interrupted.last}" if Interrupted.last else "interrupted", err=True)


def main(argv: Optional[List[str]] = None) -> None:
    """Entry point: user errors become one sentence and exit code 2, never a traceback."""
    from ..runtime import passive_waits

    passive_waits()  # before any verb imports torch: its thread pool sleeps instead of spinning on shared cores
    usage, abort = _click_exceptions()
    try:
        rc = app(args=argv, standalone_mode=False)  # a verb's typer.Exit(n) comes back as n here
        if rc == 130:  # typer turns Ctrl-C into Exit(130), silently
            _say_interrupted()
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except SkinLesionError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except (KeyboardInterrupt, *abort):
        _say_interrupted()
        sys.exit(130)
    except typer.Exit as exc:  # typer's own exits (--help, a verb's exit code; typer turns Ctrl-C into Exit(130))
        if exc.exit_code == 130:
            _say_interrupted()
        sys.exit(exc.exit_code)
    except usage as exc:  # usage errors: unknown verb or option, bad choice or number
        exc.show()
        sys.exit(2 if getattr(exc, "exit_code", 2) not in (0, 1) else exc.exit_code)
    except Exception as exc:
        if os.environ.get("SKINLESION_DEBUG"):
            raise
        typer.echo(
            f"error: unexpected {type(exc).__name__}: {exc} (rerun with SKINLESION_DEBUG=1 for the traceback and report it as a bug)",
            err=True,
        )
        sys.exit(1)
