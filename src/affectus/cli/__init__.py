"""`affectus` command line. Each group of commands lives in its own module and registers on `app`.

Every user-facing failure is an `AffectusError`: we print its one line to stderr and exit 2.
"""

from __future__ import annotations

import sys

import typer

from affectus.errors import AffectusError

app = typer.Typer(
    name="affectus",
    help="Multimodal emotion recognition toolkit: data, CMC training, evaluation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Command modules register themselves on `app` when imported.
from affectus.cli import data_cmds  # noqa: E402,F401
from affectus.cli import train_cmds  # noqa: E402,F401


def main(argv: list[str] | None = None) -> int:
    try:
        app(args=argv, standalone_mode=False)
    except AffectusError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # click usage errors carry their own exit code
        import click

        if isinstance(err, click.exceptions.ClickException):
            err.show()
            return err.exit_code
        if isinstance(err, click.exceptions.Exit):
            return err.exit_code
        if isinstance(err, click.exceptions.Abort):
            return 1
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
