"""`affectus` command line. Each group of commands lives in its own module and registers on `app`.

Every user-facing failure is an `AffectusError`: we print its one line to stderr and exit 2.
Ctrl-C prints `error: interrupted` and exits 130 (128 + SIGINT, what shells report for it), so a
script can tell an interruption from bad input.
Python warnings (numpy, torch) raised while a command runs are held back and printed after it, as
`warning:` lines, so the `error:` line of a failing command is always the first line on stderr.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

# Before torch loads OpenMP: on a busy CPU, spinning worker threads steal the cores from the thread
# with work, and our many-small-op training steps get 5-10x slower (docs/model.md). A user's own
# setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import typer

from affectus.errors import AffectusError

app = typer.Typer(
    name="affectus",
    help="Multimodal emotion recognition toolkit: data, CMC training, evaluation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        from affectus import __version__

        print(f"affectus {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", help="print the version and exit", is_eager=True, callback=_print_version
    ),
) -> None:
    """Multimodal emotion recognition toolkit: data, CMC training, evaluation."""


# `--trust-pickle`, on every command that reads a data file (docs/security.md).
TRUST_PICKLE_HELP = "read a pickle with Python's own unpickler, which runs any code in the file (docs/security.md)"

# Command modules register themselves on `app` when imported.
from affectus.cli import (
    data_cmds,  # noqa: F401
    demo_cmd,  # noqa: F401
    experiment_cmd,  # noqa: F401
    extract_cmd,  # noqa: F401
    import_cmd,  # noqa: F401
    predict_cmd,  # noqa: F401
    pretrained_cmd,  # noqa: F401
    report_cmd,  # noqa: F401
    serve_cmd,  # noqa: F401
    sweep_cmd,  # noqa: F401
    synth_cmd,  # noqa: F401
    train_cmds,  # noqa: F401
)


class _StderrHandler(logging.Handler):
    """Library log records as plain lines on whatever `sys.stderr` is now (tests swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stderr)


def setup_logging(level: int = logging.INFO) -> None:
    """The CLI's one logging setup: affectus records go to stderr as plain lines."""
    logger = logging.getLogger("affectus")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        logger.addHandler(_StderrHandler())
    logger.setLevel(level)


def main(argv: list[str] | None = None) -> int:
    from affectus.utils.threads import enable_flush_denormal

    # before torch starts its worker threads: the flag only reaches threads created afterwards
    enable_flush_denormal()
    setup_logging()
    # the user's warning filters still decide what is shown; we only decide when
    with warnings.catch_warnings(record=True) as caught:
        try:
            return _run(argv)
        finally:
            _print_warnings(caught)


def _run(argv: list[str] | None) -> int:
    try:
        # standalone mode: click reports usage errors itself (exit 2); ours arrive as AffectusError
        app(args=argv, prog_name="affectus", standalone_mode=True)
    except AffectusError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except SystemExit as done:
        if _interrupted(done):
            # typer turns Ctrl-C inside a command into a silent exit 130; say why the command stopped
            print("error: interrupted", file=sys.stderr)
            return 130
        code = done.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0


def _interrupted(err: BaseException) -> bool:
    """Whether a KeyboardInterrupt is among the exceptions that led to `err` (cause or context)."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [err]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        if isinstance(e, KeyboardInterrupt):
            return True
        seen.add(id(e))
        stack += [e.__cause__, e.__context__]
    return False


def _print_warnings(caught: list[warnings.WarningMessage]) -> None:
    seen: set[str] = set()
    for w in caught:
        line = f"warning: {w.category.__name__}: {' '.join(str(w.message).split())}"
        if line not in seen:  # one line per distinct warning, however often it was raised
            seen.add(line)
            print(line, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
