"""Build an MMSA feature file from a folder of clips in the MMSA-FET layout.

    DIR/label.csv                      video_id, clip_id, text, label, mode [, label_T, label_A, label_V, annotation]
    DIR/Raw/<video_id>/<clip_id>.mp4

Steps (docs/media.md): read and check `label.csv`; extract audio and vision features of every clip
as one task of an executor (local worker processes, or Ray: utils/executors.py), each clip's result
saved atomically in a work folder as soon as it comes back (a killed run resumes where it stopped; a
changed extractor config or a changed clip file is computed again); then pad the sequences and
write one MMSA pickle or affectus .npz, plus a failure report and a sidecar `<out>.extract.json`
with the extractor configs and per-clip frame / face counts.

A clip that fails (missing, empty, corrupt, no audio track, no video track, no face, too long) is
listed in the report with its reason and, per `on_fail`, left out (`skip`) or kept with zeros and
length 0 in the failed modality (`zero`); never silently.

Text: the transcript from label.csv goes to `raw_text`; `text` holds its sentence embedding from the
text encoder of `features/text.py` (`--text-encoder`: the packaged MiniLM by default, a local
BERT folder, or `hashed`, the hashed-word placeholder of `hashed_text.py` for machines without it).
With `asr` in the config, a row whose transcript is empty gets one from speech recognition (`asr.py`).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import os
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from affectus.data.mmsa import SPLIT_NAMES, dataset_from_raw, dataset_to_raw, write_pickle
from affectus.data.npz import write_npz
from affectus.errors import AffectusError
from affectus.features.asr import MoonshineConfig
from affectus.features.audio import AUDIO_EXTRACTORS, OpenSmileConfig
from affectus.features.base import ExtractorConfig, MediaError
from affectus.features.decode import DecodeConfig, Decoder
from affectus.features.hashed_text import HashedWordsConfig, HashedWordsExtractor
from affectus.features.vision import GEOMETRY_NAMES, HaarFaceConfig, HaarFaceExtractor
from affectus.utils.executors import Executor, LocalExecutor
from affectus.utils.io import atomic_path, write_json_atomic

_log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("video_id", "clip_id", "text", "label", "mode")
# which column holds the labels (`extract-dataset --labels`): `label`, sentiment scores; `annotation`,
# emotion class names (a categorical dataset); `auto`, annotation when it holds names and `label` is empty
LABEL_SOURCES = ("auto", "label", "annotation")
UNIMODAL_COLUMNS = {"text": "label_T", "audio": "label_A", "vision": "label_V"}
LABEL_RANGE = 3.0  # CMU-MOSI/MOSEI scores lie in [-3, 3], CH-SIMS ones in [-1, 1]
MAX_NAME_BYTES = 255  # NAME_MAX of Linux, macOS and Windows file systems: one path component
CACHE_VERSION = 1
# whole-clip failures: the file itself is unusable, so no modality is tried
CLIP_REASONS = ("missing", "empty", "corrupt", "too_long")
ON_FAIL = ("skip", "zero")
AUDIO_KINDS = AUDIO_EXTRACTORS  # the registered audio extractors (features/audio.py)


# ------------------------------------------------------------------------------------------ label.csv


@dataclasses.dataclass(frozen=True)
class ClipRow:
    video_id: str
    clip_id: str
    text: str
    label: float
    mode: str  # train / valid / test
    unimodal: dict[str, float] | None  # modality -> score, when label.csv has label_T/A/V
    line: int  # 1-based line in label.csv, for messages
    # the `annotation` cell (stripped; a class name in a categorical dataset, where `label` is its index)
    annotation: str = ""

    @property
    def id(self) -> str:
        return f"{self.video_id}$_${self.clip_id}"  # MMSA's id form

    def path(self, root: Path) -> Path:
        return root / "Raw" / self.video_id / f"{self.clip_id}.mp4"


ANNOTATION_HINT = "emotion classes? put their names in the annotation column and pass --labels annotation"


def _score(path: Path, line: int, column: str, value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        hint = f" ({ANNOTATION_HINT})" if column == "label" and value and value[0].isalpha() else ""
        if not value and column == "label":
            hint = " (for emotion classes, put their names in the annotation column: docs/media.md)"
        raise AffectusError(f"file {path} line {line}: {column} {value!r} is not a number{hint}") from None
    if not math.isfinite(x) or abs(x) > LABEL_RANGE:
        hint = f" ({ANNOTATION_HINT})" if column == "label" and x == round(x) and x > 0 else ""
        raise AffectusError(f"file {path} line {line}: {column} {x:g} outside [-3, 3]{hint}")
    return x


@dataclasses.dataclass(frozen=True)
class ClipLabels:
    """A checked `label.csv`: its rows, and what their labels are."""

    rows: list[ClipRow]
    # the class names of a categorical dataset (`annotation`), in the recorded order; None: sentiment scores
    classes: tuple[str, ...] | None = None
    # one line for the user, else None: sentiment labels that look like class indices (naming the fix), or
    # a class with no train clip
    warning: str | None = None

    @property
    def scheme(self) -> dict[str, Any] | None:
        """The label scheme the output file records (data/schemes.py), None for sentiment scores (inferred)."""
        return None if self.classes is None else {"name": "categorical", "classes": list(self.classes)}

    def describe(self) -> str:
        if self.classes is None:
            return "sentiment scores (label column)"
        return f"categorical: {', '.join(self.classes)} (annotation column)"


def read_label_csv(path: str | os.PathLike, labels: str = "auto") -> list[ClipRow]:
    """Every row of an MMSA-FET `label.csv`, checked (`read_clip_labels`)."""
    return read_clip_labels(path, labels).rows


def class_name(value: str) -> str:
    """An `annotation` cell as a class name: Unicode NFC, lower case ("Happy" and "happy" are one class)."""
    return unicodedata.normalize("NFC", value.strip()).lower()


def read_clip_labels(path: str | os.PathLike, labels: str = "auto") -> ClipLabels:
    """Every row of an MMSA-FET `label.csv`, checked: columns, ids unique, labels, modes.

    `labels` (LABEL_SOURCES): `label` reads sentiment scores in [-3, 3]; `annotation` reads class names
    (lower-cased), numbered in sorted order, so the classes of `happy, sad, angry, neutral` are
    `angry, happy, neutral, sad` = 0..3 whatever order the rows come in; `auto` takes `annotation` when
    the file has that column and `label` is empty in every row (or absent), else `label`. Class names:
    `schemes.class_name_problem`; at least two classes, every row named."""
    from affectus.data.schemes import class_name_problem, looks_like_class_indices

    if labels not in LABEL_SOURCES:
        raise AffectusError(f"--labels must be one of {', '.join(LABEL_SOURCES)}, not {labels!r}")
    path = Path(path)
    if not path.is_file():
        raise AffectusError(f"file {path}: no such file (expected the MMSA-FET label.csv)")
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:  # -sig: spreadsheet exports add a BOM
            text = f.read()
    except UnicodeDecodeError as err:
        raise AffectusError(f"file {path}: not UTF-8 text ({err})") from None
    except OSError as err:
        raise AffectusError(f"file {path}: cannot read ({err.strerror or type(err).__name__})") from None
    if "\0" in text:
        # a NUL never belongs in a text CSV (a UTF-16 export, a binary file), and no file name may hold one
        line = text.count("\n", 0, text.index("\0")) + 1
        raise AffectusError(f"file {path} line {line}: contains a NUL byte; expected UTF-8 text (a UTF-16 "
                            f"spreadsheet export must be saved as UTF-8 CSV)")
    try:
        with io.StringIO(text, newline="") as f:
            reader = csv.DictReader(f)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            required = REQUIRED_COLUMNS
            if labels != "label" and "annotation" in columns:  # names in annotation: `label` may be left out
                required = tuple(c for c in REQUIRED_COLUMNS if c != "label")
            missing = [c for c in required if c not in columns]
            if missing:
                raise AffectusError(
                    f"file {path}: missing column(s) {', '.join(missing)} (has: {', '.join(columns) or 'none'})"
                )
            present = [c for c in UNIMODAL_COLUMNS.values() if c in columns]
            if present and len(present) != 3:
                lacking = [c for c in UNIMODAL_COLUMNS.values() if c not in columns]
                raise AffectusError(
                    f"file {path}: has {', '.join(present)} but not {', '.join(lacking)} (all three or none)"
                )
            if labels == "annotation" and "annotation" not in columns:
                raise AffectusError(f"file {path}: --labels annotation, but there is no annotation column "
                                    f"(has: {', '.join(columns)})")
            reader.fieldnames = columns
            cells = [(reader.line_num, r) for r in reader]
    except csv.Error as err:
        raise AffectusError(f"file {path}: not a readable CSV ({err})") from None
    if not cells:
        raise AffectusError(f"file {path}: no clips (only a header)")
    if labels == "auto":
        empty = all(not (r.get("label") or "").strip() for _, r in cells if None not in r)
        labels = "annotation" if "annotation" in columns and empty else "label"
    categorical = labels == "annotation"
    names: dict[str, int] = {}  # class name -> first line naming it
    if categorical:
        for line, r in cells:
            if None in r:
                continue  # _row says "more fields than columns" below
            value = (r.get("annotation") or "").strip()
            name = class_name(value)
            problem = class_name_problem(name)
            if problem:
                shown = value if len(value) <= 60 else f"{value[:40]}... ({len(value)} characters)"
                what = "is empty: every clip needs its class name" if not value else f"{shown!r} {problem}"
                raise AffectusError(f"file {path} line {line}: annotation {what}")
            names.setdefault(name, line)
        if len(names) < 2:
            raise AffectusError(f"file {path}: annotation names one class only ({', '.join(names)}); a "
                                f"classifier needs at least two")
    classes = tuple(sorted(names)) if categorical else None
    index = {c: i for i, c in enumerate(classes or ())}
    rows = [_row(path, line, r, bool(present) and not categorical, index) for line, r in cells]
    seen: dict[str, int] = {}
    for r in rows:
        if r.id in seen:
            raise AffectusError(
                f"file {path} line {r.line}: duplicate clip video_id={r.video_id} clip_id={r.clip_id} (first on line {seen[r.id]})"
            )
        seen[r.id] = r.line
    warning = None
    if not categorical and looks_like_class_indices(np.asarray([r.label for r in rows])):
        values = ", ".join(f"{v:g}" for v in sorted({r.label for r in rows})[:6])
        named = any(r.annotation and r.annotation[0].isalpha() for r in rows)
        fix = ("its annotation column holds names: pass --labels annotation to train those classes" if named
               else "for emotion classes, put their names in an annotation column and pass --labels annotation")
        warning = (f"warning: file {path}: the labels ({values}) look like class indices, but are read as "
                   f"sentiment scores (< 0 negative, 0 neutral, > 0 positive); {fix} (docs/media.md)")
    untaught = [c for c in classes or () if not any(r.mode == "train" and r.annotation and class_name(r.annotation) == c
                                                   for r in rows)]
    if untaught:  # still a class (scored, recorded): the file is what the user labelled, but say it
        warning = (f"warning: file {path}: no train clip of class {', '.join(untaught)}; a model trained on this "
                   f"file never learns it (it is still scored)")
    return ClipLabels(rows, classes, warning)


def _row(path: Path, line: int, r: dict[str, Any], unimodal: bool, classes: dict[str, int] | None = None) -> ClipRow:
    if None in r:  # DictReader puts a row's extra fields under the key None
        raise AffectusError(f"file {path} line {line}: more fields than columns")
    values = {k: (v or "").strip() for k, v in r.items()}
    for key in ("video_id", "clip_id"):
        v = values[key]
        # ids name folders and files: refuse anything that could leave Raw/, or that no file system takes
        if not v or v in (".", "..") or "/" in v or "\\" in v or any(unicodedata.category(c) == "Cc" for c in v):
            shown = v if len(v) <= 60 else f"{v[:40]}... ({len(v)} characters)"
            raise AffectusError(f"file {path} line {line}: {key} {shown!r} is not a plain file name")
        # <clip_id>.mp4 in Raw/ and <clip_id>.npz in the work folder: one name, at most NAME_MAX bytes
        if len(f"{v}.mp4".encode()) > MAX_NAME_BYTES:
            raise AffectusError(f"file {path} line {line}: {key} {v[:40]!r}... is {len(v.encode())} bytes long; "
                                f"a file name takes at most {MAX_NAME_BYTES - 4} (with .mp4: {MAX_NAME_BYTES})")
    mode = values["mode"].lower()
    if mode not in SPLIT_NAMES:
        raise AffectusError(
            f"file {path} line {line}: mode {values['mode']!r} is not one of {', '.join(SPLIT_NAMES)}"
        )
    return ClipRow(
        video_id=values["video_id"],
        clip_id=values["clip_id"],
        text=values["text"],
        # a categorical dataset: the class's index (read_clip_labels checked every name)
        label=float(classes[class_name(values["annotation"])]) if classes else _score(path, line, "label", values["label"]),
        mode=mode,
        unimodal={m: _score(path, line, c, values[c]) for m, c in UNIMODAL_COLUMNS.items()}
        if unimodal
        else None,
        line=line,
        annotation=values.get("annotation", ""),
    )


# ------------------------------------------------------------------------------------------ configs


@dataclasses.dataclass(frozen=True)
class MediaConfig:
    """The extractors of one dataset: decoding, audio, vision (and the text placeholder)."""

    decode: DecodeConfig = dataclasses.field(default_factory=DecodeConfig)
    audio: ExtractorConfig = dataclasses.field(default_factory=OpenSmileConfig)  # any of AUDIO_KINDS
    vision: HaarFaceConfig = dataclasses.field(default_factory=HaarFaceConfig)
    text: HashedWordsConfig = dataclasses.field(default_factory=HashedWordsConfig)
    # the text encoder of features/text.py: "minilm" (packaged, offline), a local BERT-family
    # folder, or "hashed" (the hashed-word placeholder alone, for machines without the `text` extra)
    text_encoder: str = "minilm"
    # speech recognition for clips without a transcript (features/asr.py); None: such a clip has no text
    asr: MoonshineConfig | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**{k: getattr(self, k).to_dict() for k in ("decode", "audio", "vision", "text")},
                "text_encoder": self.text_encoder, "asr": None if self.asr is None else self.asr.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "<dict>") -> MediaConfig:
        if not isinstance(d, dict) or set(d) - {"decode", "audio", "vision", "text", "text_encoder", "asr"}:
            raise AffectusError(f"{source}: expected an object with decode, audio, vision, text, text_encoder, asr")
        if not isinstance(d.get("text_encoder", "minilm"), str):
            raise AffectusError(f"{source}: text_encoder must be 'minilm', 'hashed' or a folder path")
        audio = d.get("audio", {})
        kind = audio.get("kind", "opensmile") if isinstance(audio, dict) else None
        if kind not in AUDIO_KINDS:
            raise AffectusError(f"{source}: audio kind {kind!r}, expected one of {', '.join(AUDIO_KINDS)}")
        return cls(
            decode=DecodeConfig.from_dict(d.get("decode", {}), source),
            audio=AUDIO_KINDS[kind][0].from_dict(audio, source),
            vision=HaarFaceConfig.from_dict(d.get("vision", {}), source),
            text=HashedWordsConfig.from_dict(d.get("text", {}), source),
            text_encoder=d.get("text_encoder", "minilm"),
            asr=None if d.get("asr") is None else MoonshineConfig.from_dict(d["asr"], source),
        )

    def media_digest(self) -> str:
        """Names the cache folder: decode + audio + vision (text is cheap and made at assembly)."""
        return "-".join(getattr(self, k).digest()[:8] for k in ("decode", "audio", "vision"))


def check_modules(config: MediaConfig, whole: bool = False) -> None:
    """One clear line when the `media` extra is not installed, before any worker starts. `whole`
    (extract-dataset): also what its later steps need, the text encoder (`text`) and speech recognition
    (`asr`) when the config has them, so a missing extra is named before minutes of extraction, not after."""
    import importlib.util

    needed = {"av": "av", "cv2": "opencv-python-headless", **config.audio.requires}
    if whole:
        from affectus.features.text import MINILM_PACKAGE

        if config.text_encoder != "hashed":
            needed["transformers"] = "transformers"
        if config.text_encoder == "minilm":
            needed[MINILM_PACKAGE.replace("-", "_")] = MINILM_PACKAGE
        if config.asr is not None:
            needed["moonshine_cpp"] = "moonshine-cpp"
    missing = [dist for module, dist in needed.items() if importlib.util.find_spec(module) is None]
    if missing:
        extra = "clips" if whole else "media"
        raise AffectusError(
            f"extract-dataset needs {', '.join(missing)}: pip install 'affectus[{extra}]' (docs/media.md)"
        )


class MediaPipeline:
    """One clip file -> audio (Ta, Da) and vision face-frame (F, Dv) features, failures and stats."""

    def __init__(self, config: MediaConfig) -> None:
        self.config = config
        self.decoder = Decoder(config.decode)
        self.audio = AUDIO_KINDS[config.audio.kind][1](config.audio, sample_rate=config.decode.sample_rate)
        self.vision = HaarFaceExtractor(config.vision)
        self._asr: Any = None  # built on first use: only clips without a transcript need it
        self._pool: Any = None  # the vision thread, started on the first clip

    def transcriber(self) -> Any:
        """The config's speech recognizer (loaded once), or None when the config has none."""
        if self.config.asr is not None and self._asr is None:
            from affectus.features.asr import MoonshineTranscriber

            self._asr = MoonshineTranscriber(self.config.asr)
        return self._asr

    def __call__(self, path: Path, thumbnails: int = 0, transcribe: bool = False) -> dict[str, Any]:
        """{'audio': array | None, 'vision': array | None, 'failures': [...], 'stats': {...}}, plus
        'thumbnails' (up to that many face crops) when asked, and 'transcript' when `transcribe` and the
        config has speech recognition (None when the clip has no audio)."""
        out: dict[str, Any] = {"audio": None, "vision": None, "failures": [], "stats": {}}
        if thumbnails:
            out["thumbnails"] = []
        if transcribe and self.config.asr is not None:
            out["transcript"] = None

        def fail(modality: str, err: Exception) -> None:
            reason = err.reason if isinstance(err, MediaError) else "failed"
            detail = str(err) if isinstance(err, MediaError) else f"file {path}: {type(err).__name__}: {err}"
            out["failures"].append(
                {"modality": modality, "reason": reason, "detail": " ".join(detail.split())}
            )

        try:
            out["stats"].update(self.decoder.probe(path))
        except Exception as err:  # noqa: BLE001 - MediaError, or anything odd in a container's header
            fail("clip", err)
            return out
        # the face track is decoded and searched in a second thread while this one does the audio (and
        # speech recognition): PyAV, OpenCV, openSMILE and ONNX Runtime release the GIL in their C code,
        # so on two cores a clip takes about as long as its slower half. The results are merged below
        # in the order the sequential code had, so outputs (and cache files) do not depend on it.
        vision_job = self._threads().submit(self._vision, path, thumbnails)
        samples = None
        try:
            samples = self.decoder.audio(path)  # (S,)
            out["stats"]["audio_s"] = samples.size / self.config.decode.sample_rate
            out["audio"] = self.audio(samples)  # (Ta, Da)
        except Exception as err:  # noqa: BLE001 - one bad clip must not end a run of thousands
            fail("audio", err)
            if isinstance(err, MediaError) and err.reason == "too_long":
                vision_job.result()  # stops at the same limit; never left running behind the clip
                return out  # the clip is over the length limit (found while decoding): no part of it is used
        if "transcript" in out and samples is not None:
            try:
                out["transcript"] = self.transcriber()(samples, where=f"file {path}")
            except Exception as err:  # noqa: BLE001
                fail("text", err)
        v, err = vision_job.result()
        if v is not None:
            if thumbnails:
                out["thumbnails"] = v.thumbnails
            out["stats"].update(frames=int(v.face.size), face_frames=int(v.face.sum()))
        try:
            if err is not None:
                raise err
            if v.face.size == 0:
                raise MediaError("no_video", f"file {path}: the video track holds no frames")
            if not v.face.any():
                raise MediaError("no_face", f"file {path}: no face in any of {v.face.size} frames")
            out["vision"] = v.face_frames  # (F, Dv): frames without a face are left out, counted in stats
        except Exception as err:  # noqa: BLE001
            fail("vision", err)
        return out

    def _threads(self) -> Any:
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="affectus-vision")
        return self._pool

    def _vision(self, path: Path, thumbnails: int) -> tuple[Any, Exception | None]:
        """(VisionFeatures, None) or (None, the error): run in the vision thread, raised by the caller."""
        try:
            return self.vision(self.decoder.frames(path), thumbnails=thumbnails), None
        except Exception as err:  # noqa: BLE001 - handed back to the caller, which reports it
            return None, err


# ------------------------------------------------------------------------------------------ clip cache


def _stamp(path: Path) -> list[int]:
    """Size and mtime of a clip: a replaced file is extracted again."""
    try:
        st = path.stat()
        return [int(st.st_size), int(st.st_mtime_ns)]
    except OSError:
        return [-1, -1]


def _save_result(cache: Path, result: dict[str, Any], stamp: list[int]) -> None:
    meta = {
        "version": CACHE_VERSION,
        "stamp": stamp,
        "failures": result["failures"],
        "stats": result["stats"],
    }
    arrays = {"__meta__": np.array(json.dumps(meta, default=float))}
    for m in ("audio", "vision"):
        if result[m] is not None:
            arrays[m] = np.ascontiguousarray(result[m], dtype=np.float32)
    with atomic_path(cache) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())


class BadEntry(Exception):
    """A saved clip result that cannot be what its clip gives (the message says why)."""


MODALITIES_OF_FAILURES = ("clip", "audio", "vision", "text")
MAX_META_BYTES = 1 << 20  # a clip's record: its stats and a few one-line failures


def _npy_header(z: Any, name: str) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of `name` in an open .npz, read from the member's header without loading it."""
    with z.zip.open(f"{name}.npy") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f)
    return tuple(shape), dtype


class CacheCheck:
    """Checks a saved clip result against the clip it claims to be, before its arrays are read: each
    feature array 2-d float32 of the extractor's width, with at most as many rows as the clip's length
    (probed from the clip file itself, at most `decode.max_duration_s`) can give at the extractor's rate;
    a modality's array present exactly when it has no failure; the vision rows equal to the face frames
    counted; failures and stats of the shapes written. A hand-edited or damaged entry (wrong shapes, a
    3-million-row array that would pad every clip of the output to that length) is extracted again."""

    def __init__(self, config: MediaConfig) -> None:
        self.config = config
        self._dims: dict[str, int | None] | None = None  # on first use: no entry to check, no extractor built
        a = config.audio
        # rows per second: openSMILE's LLDs one per 10 ms; librosa one per hop (plus the centred first frame)
        self.rates = {"audio": a.rows_per_second(config.decode.sample_rate), "vision": config.decode.fps}
        self._decoder: Decoder | None = None

    def seconds(self, clip: Path) -> float:
        """The clip's length by its container, capped at the decoder's limit (the limit when it says none)."""
        if self._decoder is None:
            self._decoder = Decoder(self.config.decode)
        try:
            duration = self._decoder.probe(clip)["duration_s"]
        except Exception as err:  # noqa: BLE001 - a clip that no longer probes cannot back a saved result
            raise BadEntry(f"its clip no longer opens ({' '.join(str(err).split())})") from None
        limit = self.config.decode.max_duration_s
        return limit if duration is None else min(float(duration), limit)

    def __call__(self, meta: dict[str, Any], headers: dict[str, tuple[tuple[int, ...], np.dtype]],
                 clip: Path) -> None:
        failures, stats = meta.get("failures"), meta.get("stats")
        if not isinstance(failures, list) or not all(
            isinstance(f, dict) and f.get("modality") in MODALITIES_OF_FAILURES
            and isinstance(f.get("reason"), str) and isinstance(f.get("detail"), str) for f in failures
        ):
            raise BadEntry("its failures are not a list of {modality, reason, detail}")
        if not isinstance(stats, dict) or not all(
            isinstance(v, (int, float, str, bool)) or v is None for v in stats.values()
        ):
            raise BadEntry("its stats are not an object of numbers")
        failed = {f["modality"] for f in failures}
        seconds: float | None = None
        for m in ("audio", "vision"):
            expect = not ({"clip", m} & failed)
            if (m in headers) != expect:
                raise BadEntry(f"it {'lacks' if expect else 'holds'} {m} features although the modality "
                               f"{'did not fail' if expect else 'failed'}")
            if m not in headers:
                continue
            shape, dtype = headers[m]
            if self._dims is None:
                self._dims = feature_dims(self.config)
            width = self._dims[m]
            if dtype != np.float32 or len(shape) != 2 or (width is not None and shape[1] != width):
                raise BadEntry(f"its {m} array is {dtype} {shape}, expected float32 (rows, {width})")
            if seconds is None:
                seconds = self.seconds(clip)
            most = math.ceil((seconds + 1.0) * self.rates[m]) + 2  # 1 s slack: tracks a little longer than the container
            if not 1 <= shape[0] <= most:
                raise BadEntry(f"its {m} array has {shape[0]} rows; a {seconds:.1f} s clip gives 1 to {most}")
        if "vision" in headers and stats.get("face_frames") != headers["vision"][0][0]:
            raise BadEntry(f"its vision rows ({headers['vision'][0][0]}) differ from its face frames "
                           f"({stats.get('face_frames')!r})")


def feature_dims(config: MediaConfig) -> dict[str, int | None]:
    """The widths of a config's audio and vision features, from the config alone where it says them
    (no extractor is built: openSMILE takes seconds to import); None when only the extractor knows."""
    a, v = config.audio, config.vision
    audio = a.known_dim()
    if audio is None:
        try:
            audio = AUDIO_KINDS[a.kind][1](a, config.decode.sample_rate).dim
        except Exception:  # noqa: BLE001 - a setting the extractor lacks: every clip fails its audio anyway
            audio = None
    blocks = v.crop_size // (2 * v.hog_cell)  # HOG blocks per side: 2x2 cells each, not overlapping
    return {"audio": audio, "vision": len(GEOMETRY_NAMES) + blocks * blocks * 4 * v.hog_bins}


def _load_result(cache: Path, stamp: list[int], check: CacheCheck | None = None,
                 clip: Path | None = None) -> dict[str, Any] | None:
    """The cached result when it exists, reads, and was made from this very file; else None. With
    `check`, a result that cannot be what `clip` gives raises BadEntry, before its arrays are loaded."""
    if not cache.is_file():
        return None
    try:
        with np.load(cache, allow_pickle=False) as z:
            if z.zip.getinfo("__meta__.npy").file_size > MAX_META_BYTES:
                raise BadEntry(f"its record is over {MAX_META_BYTES} bytes")
            meta = json.loads(str(z["__meta__"]))
            if not isinstance(meta, dict) or meta.get("version") != CACHE_VERSION or meta.get("stamp") != stamp:
                return None
            if check is not None:
                if set(z.files) - {"__meta__", "audio", "vision"}:
                    raise BadEntry(f"it holds other arrays ({', '.join(sorted(z.files))})")
                check(meta, {m: _npy_header(z, m) for m in ("audio", "vision") if m in z.files}, clip or cache)
            result = {
                "audio": z["audio"] if "audio" in z.files else None,
                "vision": z["vision"] if "vision" in z.files else None,
                "failures": meta["failures"],
                "stats": meta["stats"],
            }
    except BadEntry:
        raise
    except Exception:  # noqa: BLE001 - a damaged cache file is recomputed, not trusted
        return None
    if check is not None:
        for m in ("audio", "vision"):
            if result[m] is not None and not np.isfinite(result[m]).all():
                raise BadEntry(f"its {m} array holds NaN or infinite values")
    return result


# one pipeline per worker process, built on its first clip and kept for the next ones (a process
# pool's worker or a Ray worker runs many clips); keyed by the config, so a new config rebuilds it
_PIPELINE: tuple[str, MediaPipeline] | None = None


def extract_clip(config: dict[str, Any], path: str) -> tuple[dict[str, Any], list[int]]:
    """One clip's task, run by an executor's worker: (MediaPipeline's result, the file's stamp as read).

    The stamp is taken before reading, so a file replaced while it is read no longer matches it."""
    global _PIPELINE
    key = json.dumps(config, sort_keys=True)
    if _PIPELINE is None or _PIPELINE[0] != key:
        _PIPELINE = (key, MediaPipeline(MediaConfig.from_dict(config)))
    p = Path(path)
    stamp = _stamp(p)
    return _PIPELINE[1](p), stamp


# ------------------------------------------------------------------------------------------ building


@dataclasses.dataclass
class BuildSummary:
    clips: int
    computed: int  # extracted in this run
    cached: int  # taken from the work folder (an earlier, possibly killed, run)
    written: dict[str, int]  # split -> clips in the output file
    failures: list[dict[str, Any]]
    out: Path
    report: Path
    meta: Path
    work: Path  # the per-clip results folder
    labels: str = "sentiment scores (label column)"  # what the labels are (ClipLabels.describe)


Progress = Callable[[int, int], None]  # (clips done, clips total)


def default_work_dir(out: Path) -> Path:
    return out.with_name(out.name + ".work")


def extract_clips(
    root: Path,
    rows: list[ClipRow],
    config: MediaConfig,
    work_dir: Path,
    workers: int = 1,
    progress: Progress | None = None,
    executor: Executor | None = None,
) -> tuple[dict[str, dict[str, Any]], int]:
    """Every clip's result (from the work folder or extracted now) by id, and how many were computed.

    Each clip is one task of `executor` (default: LocalExecutor(workers); workers <= 1 runs in this
    process). Its result is saved in the work folder here, by this process, the moment it arrives:
    a worker or this process killed later loses none of the clips already handed back.
    """
    cache_dir = work_dir / config.media_digest()
    cache_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(cache_dir / "config.json", config.to_dict())
    results: dict[str, dict[str, Any]] = {}
    todo: list[ClipRow] = []
    cache_of = {r.id: cache_dir / r.video_id / f"{r.clip_id}.npz" for r in rows}
    check = CacheCheck(config)
    for r in rows:
        try:
            cached = _load_result(cache_of[r.id], _stamp(r.path(root)), check, r.path(root))
        except BadEntry as err:
            _log.warning("file %s: not used, %s; extracting %s again", cache_of[r.id], err, r.path(root))
            cached = None
        if cached is None:
            todo.append(r)
        else:
            results[r.id] = cached
    done = len(results)
    if progress:
        progress(done, len(rows))

    def save(i: int, got: tuple[dict[str, Any], list[int]]) -> None:
        nonlocal done
        r = todo[i]
        result, stamp = got
        try:
            _save_result(cache_of[r.id], result, stamp)
        except OSError as err:
            raise AffectusError(f"folder {work_dir}: cannot save a clip's result ({err})") from None
        # read back as a resumed run would, so both give the very same arrays
        again = _load_result(cache_of[r.id], _stamp(r.path(root)))
        if again is None:  # the clip file changed while it was read: the saved result no longer matches it
            raise AffectusError(f"file {r.path(root)}: changed during extraction; run again")
        results[r.id] = again
        done += 1
        if progress:
            progress(done, len(rows))

    executor = executor or LocalExecutor(workers)
    tasks = [(config.to_dict(), str(r.path(root))) for r in todo]
    lost = executor.run(extract_clip, tasks, save)
    if lost:
        first = todo[lost[0]]
        raise AffectusError(
            f"{len(lost)} clip(s) lost a worker process (killed, out of memory; first: {first.path(root)}) "
            f"on {executor.describe}; {done} finished clips are saved in {work_dir}: run again to resume"
            + (" (--workers 1 uses less memory)" if isinstance(executor, LocalExecutor) else "")
        )
    return results, len(todo)


def transcribe_missing(root: Path, rows: list[ClipRow], config: MediaConfig) -> tuple[list[ClipRow], dict[str, str]]:
    """Rows whose label.csv text is empty get the transcript of their audio when the config has speech
    recognition; the rest are returned as they are. Also returns {clip id: transcript} of those filled.

    Runs in this process after the parallel extraction (the clips are decoded again: a second, cheaper
    pass than the extractors); a clip whose audio cannot be read keeps its empty text (`no_text`).
    """
    if config.asr is None or all(r.text for r in rows):
        return rows, {}
    from affectus.features.asr import MoonshineTranscriber

    asr = MoonshineTranscriber(config.asr)
    decoder = Decoder(config.decode)
    out: list[ClipRow] = []
    filled: dict[str, str] = {}
    for r in rows:
        if not r.text:
            try:
                text = asr(decoder.audio(r.path(root)), where=f"file {r.path(root)}")
            except MediaError as err:
                _log.warning("speech recognition skipped: %s", err)
                text = ""
            if text:
                filled[r.id] = text
                r = dataclasses.replace(r, text=text)
        out.append(r)
    return out, filled


def _text_extractor(config: MediaConfig) -> HashedWordsExtractor:
    # per clip, the cheap placeholder (it also flags empty transcripts); the text encoder then replaces
    # these features for the whole dataset at once in build_dataset (MediaConfig.text_encoder)
    return HashedWordsExtractor(config.text)


def _pad(seqs: list[np.ndarray], dim: int, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """[(L_i, D)] -> (N, steps, D) float32 zero-padded after each true length, and (N,) int64 lengths."""
    lengths = np.asarray([s.shape[0] for s in seqs], dtype=np.int64)
    out = np.zeros((len(seqs), steps, dim), np.float32)
    for i, s in enumerate(seqs):
        out[i, : s.shape[0]] = s
    return out, lengths


def assemble(
    rows: list[ClipRow], results: dict[str, dict[str, Any]], config: MediaConfig, root: Path, on_fail: str
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """The raw MMSA dict of the usable clips, and one report entry per failure (with the action taken)."""
    if on_fail not in ON_FAIL:
        raise AffectusError(f"--on-fail must be one of {', '.join(ON_FAIL)}, not {on_fail!r}")
    text_x = _text_extractor(config)
    dims: dict[str, int | None] = {"text": text_x.dim, "audio": None, "vision": None}
    failures: list[dict[str, Any]] = []
    kept: dict[str, list[tuple[ClipRow, dict[str, np.ndarray]]]] = {s: [] for s in SPLIT_NAMES}
    for r in rows:
        res = results[r.id]
        feats = {"text": text_x(r.text), "audio": res["audio"], "vision": res["vision"]}
        fails = list(res["failures"])
        if feats["text"].shape[0] == 0:
            fails.append(
                {"modality": "text", "reason": "no_text", "detail": f"line {r.line}: empty transcript"}
            )
        action = "skipped" if fails and on_fail == "skip" else "zero_filled"
        for f in fails:
            failures.append(
                {
                    "id": r.id,
                    "video_id": r.video_id,
                    "clip_id": r.clip_id,
                    "split": r.mode,
                    "path": str(r.path(root)),
                    **f,
                    "action": action,
                }
            )
        if fails and on_fail == "skip":
            continue
        for m in ("audio", "vision"):
            if feats[m] is not None:
                dims[m] = feats[m].shape[1]
        kept[r.mode].append((r, feats))
    # a modality that failed in every kept clip: its extractor still says how wide the zeros are
    if dims["audio"] is None:
        dims["audio"] = AUDIO_KINDS[config.audio.kind][1](config.audio, config.decode.sample_rate).dim
    if dims["vision"] is None:
        dims["vision"] = HaarFaceExtractor(config.vision).dim
    # one padded length per modality for every split, as in MMSA's files (readers take it from any split)
    steps = {
        m: max([1] + [f[m].shape[0] for items in kept.values() for _, f in items if f[m] is not None])
        for m in ("text", "audio", "vision")
    }
    from affectus.data import mmsa  # its grouping rule, so label.csv and MMSA ids give the same positions

    raw: dict[str, dict[str, Any]] = {}
    for split, items in kept.items():
        if not items:
            continue
        d: dict[str, Any] = {"id": [r.id for r, _ in items], "raw_text": [r.text for r, _ in items]}
        # the video is the group; clip ids give the order (as numbers when they all are, else row order)
        d["group"] = [r.video_id for r, _ in items]
        d["position"] = mmsa.order_in_groups(d["group"], [r.clip_id for r, _ in items])
        for m in ("text", "audio", "vision"):
            seqs = [f[m] if f[m] is not None else np.zeros((0, dims[m]), np.float32) for _, f in items]
            d[m], d[f"{m}_lengths"] = _pad(seqs, dims[m], steps[m])
        d["regression_labels"] = np.asarray([r.label for r, _ in items], np.float32)
        if items[0][0].unimodal is not None:
            for m, key in (("text", "T"), ("audio", "A"), ("vision", "V")):
                d[f"regression_labels_{key}"] = np.asarray([r.unimodal[m] for r, _ in items], np.float32)  # type: ignore[index]
        raw[split] = d
    return raw, failures


def _real(path: Path) -> Path:
    """Where a write to `path` lands: its folder resolved (symlinks followed) + its name. An atomic write
    renames over that entry, so this is the file it replaces."""
    return Path(os.path.realpath(path.parent)) / path.name


def _input_hit(root: Path, path: Path) -> str | None:
    """What of the dataset `path` is, when a write to it would replace one of the run's inputs: label.csv,
    the dataset folder itself, or anything in Raw/ (the clips, and their folders); else None. Other
    paths inside the dataset folder (a new `DIR/feats.npz`) are not inputs and may be written."""
    label, raw = _real(root / "label.csv"), Path(os.path.realpath(root / "Raw"))
    for where in {_real(path), Path(os.path.realpath(path))}:  # the entry, and a symlink's target
        if where == label or where == Path(os.path.realpath(label)):
            return "the dataset's own label.csv"
        if where == Path(os.path.realpath(root)):
            return "the dataset folder itself"
        if where == raw or raw in where.parents:
            return "inside the dataset's Raw/ folder (its clips)"
    return None


def check_outputs(root: Path, outputs: dict[str, Path], work: Path, overwrite: bool) -> None:
    """Before any work: refuse an output that would replace an input of the run (even with `overwrite`),
    two outputs that are one file, and (without `overwrite`) an output file that exists. `outputs` maps
    a name for messages (`--out FILE`, `--report`) to its path. The work folder is not an output: a run
    always reuses it (that is how a killed run resumes), but it must not lie in the inputs either."""
    seen: dict[Path, str] = {}
    for option, path in outputs.items():
        hit = _input_hit(root, path)
        if hit:
            raise AffectusError(f"{option} {path}: is {hit}; extract-dataset never writes over its inputs "
                                f"(choose a path outside {root / 'Raw'} and other than label.csv)")
        if path.is_dir():
            raise AffectusError(f"{option} {path}: is a directory, expected a file path")
        if _real(path) in seen:
            raise AffectusError(f"{option} {path}: the same file as {seen[_real(path)]}; choose another path")
        seen[_real(path)] = option
    hit = _input_hit(root, work)
    if hit:
        raise AffectusError(f"--work-dir {work}: is {hit}; choose a folder outside the dataset's inputs")
    if not overwrite:
        for option, path in outputs.items():
            if path.exists():
                raise AffectusError(f"{option} {path}: file exists; pass --overwrite to replace it")


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for dist in ("opensmile", "librosa", "av", "opencv-python-headless", "opencv-python", "scikit-learn"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def build_dataset(
    root: str | os.PathLike,
    out: str | os.PathLike,
    config: MediaConfig | None = None,
    *,
    workers: int = 1,
    on_fail: str = "skip",
    work_dir: str | os.PathLike | None = None,
    report: str | os.PathLike | None = None,
    progress: Progress | None = None,
    executor: Executor | None = None,
    overwrite: bool = False,
    labels: str = "auto",
) -> BuildSummary:
    """`affectus extract-dataset`: folder of clips -> MMSA file (.npz by suffix, else pickle) + report.

    `out`, the report and `<out>.extract.json` are refused when they exist, unless `overwrite`; a path
    that would replace an input (label.csv, anything under Raw/) is refused always (`check_outputs`).
    `labels` (LABEL_SOURCES): which label.csv column holds the labels (`read_clip_labels`); class names
    make a categorical dataset, whose classes the .npz records (an MMSA pickle has no place for them)."""
    root, out = Path(root), Path(out)
    config = config or MediaConfig()
    if on_fail not in ON_FAIL:
        raise AffectusError(f"--on-fail must be one of {', '.join(ON_FAIL)}, not {on_fail!r}")
    if not root.is_dir():
        raise AffectusError(f"folder {root}: no such folder (expected label.csv and Raw/)")
    work = Path(work_dir) if work_dir is not None else default_work_dir(out)
    report_path = Path(report) if report is not None else out.with_name(out.name + ".failures.json")
    meta_path = out.with_name(out.name + ".extract.json")
    check_outputs(root, {"--out": out, "--report": report_path, "the record": meta_path}, work,
                  overwrite)
    table = read_clip_labels(root / "label.csv", labels)
    rows = table.rows
    if table.classes is not None and out.suffix != ".npz":
        raise AffectusError(f"--out {out}: a categorical dataset ({', '.join(table.classes)}) records its class names "
                            f"in an affectus .npz; an MMSA pickle has no place for them: name the output FILE.npz")
    if table.warning:
        _log.warning("%s", table.warning)

    check_modules(config, whole=True)
    results, computed = extract_clips(
        root, rows, config, work, workers=workers, progress=progress, executor=executor
    )
    rows, transcribed = transcribe_missing(root, rows, config)
    raw, failures = assemble(rows, results, config, root, on_fail)
    failed_ids = {f["id"] for f in failures}
    # the report first: when nothing is usable, it is what the user needs to read
    write_json_atomic(
        report_path,
        {
            "label_csv": str(root / "label.csv"),
            "on_fail": on_fail,
            "clips": len(rows),
            "failed_clips": len(failed_ids),
            "failures": failures,
        },
    )
    if not raw:
        raise AffectusError(f"folder {root}: no usable clip ({len(failed_ids)} failed; see {report_path})")
    dataset = dataset_from_raw(raw, source=str(out))
    text_inputs = None
    if config.text_encoder != "hashed":
        # the transcripts through the text encoder, all at once (batched, one model load)
        from affectus.features.text import (
            reencode_dataset,
            text_encoder_from_spec,
            text_inputs_record,
        )

        encoder = text_encoder_from_spec(None if config.text_encoder == "minilm" else config.text_encoder)
        dataset = reencode_dataset(dataset, encoder, text="sentence")
        text_inputs = text_inputs_record(encoder, text="sentence", bert=False)
    dataset.scheme = table.scheme  # what the labels mean, so no reader guesses (None: sentiment, inferred)
    if out.suffix == ".npz":
        write_npz(dataset, out)
    else:
        write_pickle(dataset_to_raw(dataset), out)
    write_json_atomic(
        meta_path,
        {
            "extractors": config.to_dict(),
            "versions": _versions(),
            "report": str(report_path),
            # which column gave the labels, and the scheme the .npz records (None: sentiment scores)
            "labels": {"column": "annotation" if table.classes is not None else "label", "scheme": table.scheme},
            "text_features": text_inputs or "hashed words (features/hashed_text.py), a placeholder",
            "clips": {r.id: results[r.id]["stats"] for r in rows},
            "transcribed": transcribed,  # clip id -> transcript from speech recognition (empty text in label.csv)
        },
    )
    return BuildSummary(
        clips=len(rows),
        computed=computed,
        cached=len(rows) - computed,
        written={name: len(s) for name, s in dataset.splits.items()},
        failures=failures,
        out=out,
        report=report_path,
        meta=meta_path,
        work=work,
        labels=table.describe(),
    )
