"""The study's storage: URLs normalised, checked and masked (no password reaches a terminal or a log),
storage failures as one line, and the Optuna storage opened with its heartbeat."""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Iterator
from typing import Any

from affectus.errors import AffectusError


def normalise_storage_url(url: str) -> str:
    """`postgresql://` -> the installed driver (psycopg 3 preferred, else psycopg2)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            import importlib.util

            driver = "psycopg" if importlib.util.find_spec("psycopg") else "psycopg2"
            return f"postgresql+{driver}://{url[len(prefix):]}"
    return url


# Query parameters that carry a credential (libpq's `password`, `sslpassword`, a token...): masked
# wherever a URL is shown or saved, like the password before the host.
_SECRET_KEY = re.compile(r"pass|pwd|secret|token|key|cred|auth", re.IGNORECASE)


def _parse_url(url: str):
    """SQLAlchemy's URL of `url`, or None when it cannot be parsed (a bad port is a ValueError there)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url)
    except (ArgumentError, ValueError, TypeError):
        return None


def redact(url: str) -> str:
    """The URL with every credential masked: the password before the host and each query parameter
    that names one (`?password=`, `sslpassword`, ...). A URL whose parts cannot be told apart for sure
    (unparseable, a second `@` that SQLAlchemy would read as part of the host) shows its scheme only."""
    from urllib.parse import urlencode

    parsed = _parse_url(url)
    if parsed is None or "@" in (parsed.host or ""):
        return f"{url.split('://', 1)[0]}://..." if "://" in url else "(unparseable URL)"
    query = {k: "***" if _SECRET_KEY.search(k) else v for k, v in parsed.query.items()}
    text = parsed.set(query={}).render_as_string(hide_password=True)
    return text + ("?" + urlencode(query, doseq=True, safe="*") if query else "")


def _secrets(url: str) -> list[str]:
    """The credential texts of `url` (to scrub from a driver's message, which may quote the URL)."""
    parsed = _parse_url(url)
    if parsed is None:
        return []
    found = [str(parsed.password or "")] + [str(x) for k, v in parsed.query.items() if _SECRET_KEY.search(k)
                                             for x in (v if isinstance(v, tuple) else (v,))]
    if "@" in (parsed.host or ""):
        found.append(parsed.host.rsplit("@", 1)[0])
    return [s for s in found if s]


def check_storage_url(url: str) -> None:
    """Refuse, in one masked line, a storage URL that cannot be used as written: unparseable, a port
    that is not a number, or a second `@` (a password's `@` must be written %40, else SQLAlchemy takes
    the rest of the password for the host and would show it)."""
    parsed = _parse_url(url)
    if parsed is None:
        raise AffectusError(f"--storage {redact(url)}: not a database URL (expected sqlite:///FILE or "
                            "postgresql://USER:PASSWORD@HOST[:PORT]/DB)")
    if "@" in (parsed.host or ""):
        raise AffectusError(f"--storage {redact(url)}: more than one '@' before the host; write an '@' in "
                            "the user name or password as %40")


def _scrub(text: str, url: str) -> str:
    # secrets under 4 characters are left: replacing every "p" would garble the message, and no driver
    # quotes a password anyway (this is for one that echoes the URL's text)
    for secret in sorted(_secrets(url), key=len, reverse=True):
        if len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


@contextlib.contextmanager
def storage_errors(url: str) -> Iterator[None]:
    """Every failure to reach or read the study's storage as one line naming it (never a traceback):
    a bad URL, an unreachable or refusing PostgreSQL server, a SQLite file that is not a database.
    The line never holds a credential (`redact`, and a driver's message is scrubbed of them)."""
    import sqlalchemy.exc

    check_storage_url(url)
    try:
        yield
    except sqlalchemy.exc.ArgumentError:
        raise AffectusError(f"--storage {redact(url)}: not a database URL (expected sqlite:///FILE or "
                            "postgresql://USER:PASSWORD@HOST/DB)") from None
    except sqlalchemy.exc.DBAPIError as err:
        reason = _scrub(" ".join(str(err.orig).split()) or type(err.orig).__name__, url)
        raise AffectusError(f"--storage {redact(url)}: cannot use the study storage ({reason})") from None
    except sqlalchemy.exc.SQLAlchemyError as err:
        reason = _scrub(" ".join(str(err).split()[:40]) or type(err).__name__, url)
        raise AffectusError(f"--storage {redact(url)}: cannot use the study storage ({reason})") from None
    except ModuleNotFoundError as err:  # the PostgreSQL driver is not installed
        raise AffectusError(f"--storage {redact(url)}: needs the Python module {err.name!r}: pip install "
                            "'affectus[postgres]'") from None


def open_storage(url: str, heartbeat: int | None):
    import optuna

    # SQLite: several processes write one file, so wait for a busy database rather than fail at once
    kwargs: dict[str, Any] = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {
        "pool_pre_ping": True}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=heartbeat,
                                          grace_period=None if heartbeat is None else 3 * heartbeat)
