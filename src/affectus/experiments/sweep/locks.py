"""Locks: a sweep directory belongs to one study (its claim file), and trials are created one worker at a
time (a file lock beside a SQLite file, an advisory lock in PostgreSQL)."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path

from affectus.errors import AffectusError
from affectus.experiments.sweep.storage import redact
from affectus.utils.io import lock_dir, read_json_file, write_json_atomic

CLAIM_FILE = "sweep-study.json"  # the study this sweep directory belongs to


def claim_out_dir(out: Path, study: str, record: bool = True) -> None:
    """One study per sweep directory: trials/<n>/ is numbered by the study, so two studies would mix.

    The first worker records the study in OUT/sweep-study.json; later workers must name the same one.
    The check and the record happen under one exclusive lock, so two workers starting at once with
    different studies cannot both pass it."""
    claim = out / CLAIM_FILE
    with lock_dir(out, "sweep directory", wait=True, name=".sweep-claim.lock"):
        held = None
        for path in (claim, out / "sweep.json"):  # sweep.json: directories from before the claim file
            if path.is_file():
                record = read_json_file(path, "sweep record")
                held = record.get("study") if isinstance(record, dict) else None
                break
        if held is not None and held != study:
            raise AffectusError(f"{out}: holds the sweep of study '{held}'; choose another --out (or --study {held})")
        if record and not claim.is_file():
            write_json_atomic(claim, {"study": study})


class StudyLock:
    """The lock every worker of one storage takes to create a trial (and the study and tables).

    SQLite: an fcntl lock on `<db>.lock` beside the file (a SQLite study lives on one machine).
    PostgreSQL: a session advisory lock on a connection of its own. Either is dropped when its
    holder dies (the kernel closes the file; PostgreSQL ends the session), so no lock outlives a
    killed worker.
    """

    _KEY = int.from_bytes(hashlib.sha256(b"affectus-sweep").digest()[:8], "big", signed=True)

    def __init__(self, url: str) -> None:
        import sqlalchemy
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        self._path: Path | None = None
        self._engine = None
        if parsed.get_backend_name() == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                self._path = Path(parsed.database + ".lock")
        elif parsed.get_backend_name() == "postgresql":
            self._engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        else:
            raise AffectusError(f"--storage {redact(url)}: expected sqlite:///FILE or postgresql://...")

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        if self._path is not None:
            # blocking: the section is short (create a trial), and a dead holder's lock goes with it
            with lock_dir(self._path.parent, "study storage directory", wait=True, name=self._path.name):
                yield
        elif self._engine is not None:
            from sqlalchemy import text

            with self._engine.connect() as conn:
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": self._KEY})
                conn.commit()
                try:
                    yield
                finally:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self._KEY})
                    conn.commit()
        else:
            yield
