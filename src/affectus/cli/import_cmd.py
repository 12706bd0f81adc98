"""`affectus import NAME DIR --out FILE`: a published dataset's own files as an affectus .npz.

`import` is a Python keyword, so the group lives here as `import_app` and is registered under the
command name `import`. Every check runs before anything is written; the .npz is written atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from affectus.cli import app

import_app = typer.Typer(name="import", help="Import a published dataset's own files as an affectus .npz.",
                         no_args_is_help=True)
app.add_typer(import_app, name="import")


@import_app.command("meld")
def import_meld_cmd(
    folder: Annotated[Path, typer.Argument(help="folder with MELD's train/dev/test_sent_emo.csv", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="the .npz to write", show_default=False)],
    target: Annotated[str, typer.Option("--target", help="emotion (7 classes) or sentiment (3 classes)")] = "emotion",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace --out if it exists")] = False,
) -> None:
    """MELD's CSVs (train / dev / test -> train / valid / test), text only; --preset meld or meld-sentiment.

    Dialogues, utterance order and speakers are kept; audio and vision are absent (docs/data.md)."""
    from affectus.data.meld import import_meld
    from affectus.data.mmsa import sha256_file
    from affectus.data.npz import write_npz
    from affectus.data.types import group_summary
    from affectus.utils.io import refuse_overwrite

    refuse_overwrite(out, overwrite)
    dataset = import_meld(folder, target)
    write_npz(dataset, out)
    sizes = ", ".join(
        f"{name} {len(s)} ({group_summary(s.groups)['groups']} dialogues)"  # type: ignore[index]
        for name, s in dataset.splits.items()
    )
    print(f"wrote {out} (MELD {target}: {sizes}; text only; sha256 {sha256_file(out)})")
