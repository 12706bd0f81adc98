"""MELD's transcripts (Poria et al., ACL 2019) as an affectus dataset: text only, in dialogue order.

MELD publishes one CSV per split (`train_sent_emo.csv`, `dev_sent_emo.csv`, `test_sent_emo.csv`) with
columns `Sr No., Utterance, Speaker, Emotion, Sentiment, Dialogue_ID, Utterance_ID, Season, Episode,
StartTime, EndTime`. Whichever are present become train / valid / test. Each utterance keeps its
transcript (`raw_text`, what `train.text_inputs` encodes), its speaker, its dialogue (`groups`) and its
`Utterance_ID` (`positions`); rows are sorted by (dialogue, utterance). MELD's audio and video are not
read: audio and vision are absent in the availability mask (1-d zero placeholders, length 0), and the
file's own `text` is a 1-d placeholder too, since the text features come from the text encoder.

Labels are class indices: the seven emotions in `EMOTIONS` order, or the three sentiments in
`SENTIMENTS` order (negative, neutral, positive, as the sentiment schemes number them).
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np

from affectus.data.types import MERDataset, Split
from affectus.errors import AffectusError

MELD_FILES = {"train": "train_sent_emo.csv", "valid": "dev_sent_emo.csv", "test": "test_sent_emo.csv"}
EMOTIONS = ("neutral", "joy", "surprise", "anger", "sadness", "disgust", "fear")
SENTIMENTS = ("negative", "neutral", "positive")
TARGETS = {"emotion": ("Emotion", EMOTIONS), "sentiment": ("Sentiment", SENTIMENTS)}
REQUIRED_COLUMNS = ("Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID")


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise AffectusError(f"file {path}: cannot read ({err.strerror or type(err).__name__})") from None
    try:
        return data.decode("utf-8-sig")  # a byte-order mark, as spreadsheet exports write one, is dropped
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise AffectusError(
            f"file {path} line {line}: not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}); "
            "re-save the CSV as UTF-8"
        ) from None


def _whole(path: Path, line: int, column: str, value: str) -> int:
    text = value.strip()
    if not (text.isascii() and text.isdigit()):
        raise AffectusError(f"file {path} line {line}: {column} {value!r} is not a whole number >= 0")
    return int(text)


def read_meld_csv(path: str | os.PathLike, split: str, target: str = "emotion") -> Split:
    """One MELD CSV as a text-only `Split` named `split`, checked: columns, labels, ids, UTF-8, rows."""
    if target not in TARGETS:
        raise AffectusError(f"--target {target!r}: expected one of {', '.join(TARGETS)}")
    column, classes = TARGETS[target]
    path = Path(path)
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise AffectusError(f"file {path}: missing column {missing[0]!r} (MELD's CSVs have {', '.join(REQUIRED_COLUMNS)})")
    reader.fieldnames = header  # stray spaces around a header name are not part of the name
    rows: list[tuple[int, int, str, str, int]] = []
    first: dict[tuple[int, int], int] = {}
    try:
        for r in reader:
            line = reader.line_num  # the line the row ends on (a quoted utterance may span lines)
            if None in r or any(r.get(c) is None for c in REQUIRED_COLUMNS):
                raise AffectusError(f"file {path} line {line}: {len(header)} columns expected, the row has a different count")
            dia = _whole(path, line, "Dialogue_ID", r["Dialogue_ID"])
            utt = _whole(path, line, "Utterance_ID", r["Utterance_ID"])
            if (dia, utt) in first:
                raise AffectusError(f"file {path} line {line}: duplicate Dialogue_ID {dia} Utterance_ID {utt} "
                                    f"(first on line {first[(dia, utt)]})")
            first[(dia, utt)] = line
            label = r[column].strip().lower()
            if label not in classes:
                raise AffectusError(f"file {path} line {line}: unknown {column} {r[column]!r} "
                                    f"(expected one of {', '.join(classes)})")
            text = " ".join(r["Utterance"].split())  # MELD's utterances carry stray tabs and line breaks
            if not text:
                raise AffectusError(f"file {path} line {line}: empty Utterance")
            rows.append((dia, utt, text, r["Speaker"].strip(), classes.index(label)))
    except csv.Error as err:
        raise AffectusError(f"file {path} line {reader.line_num}: not a readable CSV ({err})") from None
    if not rows:
        raise AffectusError(f"file {path}: empty split (a header and no rows)")
    rows.sort(key=lambda t: (t[0], t[1]))  # dialogue order, whatever order the file used
    n = len(rows)
    placeholder = np.zeros((n, 1, 1), np.float32)
    available = np.zeros((n, 3), dtype=bool)
    available[:, 0] = True  # text only
    return Split(
        name=split,
        text=placeholder.copy(),
        audio=placeholder.copy(),
        vision=placeholder.copy(),
        text_lengths=np.ones(n, np.int64),
        audio_lengths=np.zeros(n, np.int64),
        vision_lengths=np.zeros(n, np.int64),
        labels=np.asarray([t[4] for t in rows], np.float32),
        ids=[f"dia{t[0]}_utt{t[1]}" for t in rows],  # MELD's own clip names (dia0_utt0.mp4)
        raw_text=[t[2] for t in rows],
        available=available,
        groups=[f"dia{t[0]}" for t in rows],
        positions=np.asarray([t[1] for t in rows], np.int64),
        speakers=[t[3] for t in rows],
    )


def import_meld(folder: str | os.PathLike, target: str = "emotion") -> MERDataset:
    """MELD's CSVs in `folder` (whichever of train / dev / test are there) as one dataset."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AffectusError(f"folder {folder}: {'no such folder' if not folder.exists() else 'not a folder'}")
    if target not in TARGETS:
        raise AffectusError(f"--target {target!r}: expected one of {', '.join(TARGETS)}")
    splits = {name: read_meld_csv(folder / f, name, target)
              for name, f in MELD_FILES.items() if (folder / f).is_file()}
    if not splits:
        raise AffectusError(f"folder {folder}: none of MELD's CSVs ({', '.join(MELD_FILES.values())})")
    return MERDataset(splits=splits, source=f"meld:{target}:{folder}")
