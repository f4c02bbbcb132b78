"""Checks of user input that every entry point shares: numbers, names that become paths,
folders to write into, ports. Each raises :class:`NASError` with one line that names the
field, the value and what is accepted."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from nas.errors import NASError

#: longest run / sweep name: room for suffixes within a file system's 255-byte names
MAX_NAME_LENGTH = 120
_NAME_FORBIDDEN = set('/\\\0') | {chr(c) for c in range(32)}


def number(field: str, value, *, integer: bool = False, minimum: float | None = None, above: float | None = None,
           maximum: float | None = None, allow_none: bool = False):
    """``value`` if it is a finite number (an int when ``integer``) within the bounds."""
    if value is None and allow_none:
        return None
    kind = "an integer" if integer else "a number"
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if not ok_type or isinstance(value, bool):
        raise NASError(f"{field} must be {kind}{' or null' if allow_none else ''}, got {value!r}")
    if not math.isfinite(value):
        raise NASError(f"{field} must be a finite number, got {value!r}")
    if minimum is not None and value < minimum:
        raise NASError(f"{field} must be >= {minimum:g}, got {value!r}")
    if above is not None and value <= above:
        raise NASError(f"{field} must be > {above:g}, got {value!r}")
    if maximum is not None and value > maximum:
        raise NASError(f"{field} must be <= {maximum:g}, got {value!r}")
    return value


def boolean(field: str, value) -> bool:
    if not isinstance(value, bool):
        raise NASError(f"{field} must be true or false, got {value!r}")
    return value


def safe_name(field: str, value) -> str:
    """``value`` if it can be one folder or file name: not empty, not '.' or '..', no path
    separator or control character, at most MAX_NAME_LENGTH characters."""
    if not isinstance(value, str) or not value.strip():
        raise NASError(f"{field} must be a non-empty name, got {value!r}")
    bad = sorted({c for c in value if c in _NAME_FORBIDDEN})
    if bad or value in (".", ".."):
        what = f"contains {', '.join(repr(c) for c in bad)}" if bad else "is a relative folder"
        raise NASError(f"{field} {value!r} {what}; it names one folder inside output_dir, so use letters, digits, "
                       "'-', '_' and '.' (no '/', '..' or control characters)")
    if len(value) > MAX_NAME_LENGTH:
        raise NASError(f"{field} is {len(value)} characters long; at most {MAX_NAME_LENGTH} are accepted")
    return value


def folder_path(field: str, value) -> Path:
    """A folder path the user named, checked without writing: not empty, not an existing
    file, and the nearest existing folder above it can be written to."""
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        raise NASError(f"{field} must be a folder path, got {value!r}")
    try:
        path = Path(value).expanduser()
        if path.exists() and not path.is_dir():
            raise NASError(f"{field} {value!r} exists and is not a folder; name a folder")
        probe = path
        while not probe.exists():
            probe = probe.parent
        if not probe.is_dir():
            raise NASError(f"{field} {value!r} cannot be made: {str(probe)!r} is not a folder")
        if not os.access(probe, os.W_OK | os.X_OK):
            raise NASError(f"{field} {value!r} cannot be written: no write permission in {str(probe)!r}")
    except OSError as exc:  # e.g. a name longer than the file system takes
        raise NASError(f"{field} {value[:60]!r}{'...' if len(value) > 60 else ''} is not a usable folder path "
                       f"({exc.strerror or exc})") from None
    return path


def make_folder(field: str, path: Path) -> bool:
    """Create ``path`` (and its parents); returns whether it was new. File system refusals
    (a read-only or virtual file system such as /proc) become one-line errors."""
    existed = path.is_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
        if not existed:  # e.g. /proc accepts nothing: find out now, not at the first file
            probe = path / ".hwnas-write-test"
            probe.touch()
            probe.unlink()
    except OSError as exc:
        if not existed:
            try:
                path.rmdir()
            except OSError:
                pass
        raise NASError(f"{field}: cannot create or write the folder {str(path)!r} ({exc.strerror or exc})") from None
    return not existed


def port(field: str, value) -> int:
    return number(field, value, integer=True, minimum=1, maximum=65535)


def finite_or_null(obj):
    """``obj`` with every NaN or infinite float replaced by None (JSON null)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_null(v) for v in obj]
    return obj


def json_text(obj, **kw) -> str:
    """Strict JSON (RFC 8259: no NaN or Infinity, which other readers reject) of ``obj``;
    a non-finite number (e.g. the loss of a diverged training) is written as null rather
    than failing a finished search."""
    return json.dumps(finite_or_null(obj), allow_nan=False, **kw)


def read_json(path, what: str, remedy: str):
    """The JSON document in ``path``, or one line naming ``what`` it is, what is wrong and
    ``remedy`` (what to do about a damaged file)."""
    path = Path(path)
    if not path.is_file():
        raise NASError(f"{what} {str(path)!r} does not exist")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise NASError(f"{what} {str(path)!r} is corrupted (not JSON: {exc}); {remedy}") from None
    except OSError as exc:
        raise NASError(f"{what} {str(path)!r} cannot be read: {exc.strerror or exc}") from None


def write_json_atomic(path, doc, what: str, remedy: str) -> None:
    """``doc`` as strict JSON in ``path``, through a temporary file (a kill leaves the last
    good file); one line naming ``what`` it is and ``remedy`` when it cannot be written."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json_text(doc, indent=1, default=str))
        os.replace(tmp, path)
    except OSError as exc:
        raise NASError(f"cannot write {what} {str(path)!r}: {exc.strerror or exc}; {remedy}") from None
