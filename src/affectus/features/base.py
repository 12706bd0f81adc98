"""What every extractor shares: a config dataclass that round-trips through JSON, and `MediaError`.

A config is saved next to every dataset built with it (and, once wired, into every run trained on
that dataset), so training and prediction extract features the same way. `digest()` names a config
in cache folders: a changed setting never reuses features computed under the old one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from affectus.errors import AffectusError
from affectus.utils.io import write_json_atomic

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self needs Python 3.11


class MediaError(AffectusError):
    """A clip that cannot give a modality's features; `reason` is a short stable code for reports.

    Reasons: `missing`, `empty`, `corrupt`, `no_audio`, `no_video`, `too_long`, `no_face`, `failed`.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(" ".join(message.split()))  # one line, always
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class ExtractorConfig:
    """Base of every extractor config. `kind` names the extractor class the config builds."""

    kind: str = ""
    # modules the extractor imports -> the distribution that installs each (named when one is missing)
    requires: ClassVar[dict[str, str]] = {}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "<dict>") -> Self:
        """Build from a dict; unknown keys or a different `kind` are an error naming `source`."""
        if not isinstance(d, dict):
            raise AffectusError(f"{source}: expected a JSON object for {cls.__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise AffectusError(f"{source}: unknown {cls.__name__} key(s): {', '.join(unknown)}")
        expected = cls().kind
        if d.get("kind", expected) != expected:
            raise AffectusError(f"{source}: config kind {d.get('kind')!r}, expected {expected!r}")
        # JSON has lists where the dataclass has tuples: convert so configs compare equal.
        clean = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        try:
            return cls(**clean)
        except (TypeError, ValueError) as err:
            raise AffectusError(f"{source}: bad {cls.__name__} ({err})") from None

    def save(self, path: str | os.PathLike) -> None:
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> Self:
        try:
            d = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as err:  # Recursion: nested too deeply
            raise AffectusError(f"file {path}: not a readable JSON config ({err})") from None
        return cls.from_dict(d, source=f"file {path}")

    def rows_per_second(self, sample_rate: int) -> float:
        """Feature rows per second of audio (a sequence extractor's rate; the cache check bounds rows by it)."""
        raise NotImplementedError(f"{type(self).__name__} does not say its rows per second")

    def known_dim(self) -> int | None:
        """The feature width from the config alone, or None when only a built extractor knows it."""
        return None

    def digest(self) -> str:
        """Short stable hash of the settings (sorted JSON)."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
