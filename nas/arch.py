"""Decisions and architectures: the currency passed between every part of the framework."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Iterator

from nas.errors import NASError

#: Option types a decision may hold: what JSON and Optuna's categorical parameters carry.
OPTION_TYPES = (type(None), bool, int, float, str)


@dataclass(frozen=True)
class Decision:
    """One named discrete choice.

    ``tag`` groups decisions (``coarse``/``fine`` for a two-stage search, or the layer a
    decision belongs to); searchers may restrict themselves to one tag.
    """

    name: str
    options: tuple
    tag: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "options", tuple(self.options))
        if not self.options:
            raise ValueError(f"decision {self.name!r} has no options")
        for o in self.options:
            if not isinstance(o, OPTION_TYPES):
                raise TypeError(
                    f"decision {self.name!r}: option {o!r} is a {type(o).__name__}; "
                    "options must be None, bool, int, float or str"
                )
        if len(set(map(_canon, self.options))) != len(self.options):
            raise ValueError(f"decision {self.name!r} has repeated options {self.options}")

    def index(self, value) -> int:
        for i, o in enumerate(self.options):
            if _canon(o) == _canon(value):
                return i
        raise NASError(
            f"decision {self.name!r} has no option {value!r}; options are: "
            f"{', '.join(map(repr, self.options))}"
        )


def _canon(value):
    # 3 and 3.0 and True are different options: compare by type and value.
    return (type(value).__name__, value)


class Arch(Mapping):
    """An immutable mapping from decision name to chosen option. Hashable, JSON in and out."""

    __slots__ = ("_values", "_hash")

    def __init__(self, values: Mapping[str, Any] | None = None, **kw):
        merged = dict(values or {})
        merged.update(kw)
        for k, v in merged.items():
            if not isinstance(k, str):
                raise NASError(f"arch decision names must be strings, got {k!r}")
            if not isinstance(v, OPTION_TYPES):
                raise NASError(
                    f"arch decision {k!r} has value {v!r} of type {type(v).__name__}; "
                    "values must be None, bool, int, float or str"
                )
        self._values = dict(sorted(merged.items()))
        self._hash = None

    def __getitem__(self, key):
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __hash__(self):
        if self._hash is None:
            self._hash = hash(self.canonical_json())
        return self._hash

    def __eq__(self, other):
        if not isinstance(other, Arch):
            return NotImplemented
        return self.canonical_json() == other.canonical_json()

    def __repr__(self):
        inner = ", ".join(f"{k}={v!r}" for k, v in self._values.items())
        return f"Arch({inner})"

    def replace(self, **changes) -> "Arch":
        values = dict(self._values)
        values.update(changes)
        return Arch(values)

    def canonical_json(self) -> str:
        return json.dumps(self._values, sort_keys=True, separators=(",", ":"))

    def key(self) -> str:
        """A short stable identifier (the ledger's lookup key)."""
        return hashlib.sha1(self.canonical_json().encode()).hexdigest()[:16]

    def to_json(self, space: str | None = None, indent: int | None = None) -> str:
        doc = {"decisions": self._values}
        if space is not None:
            doc = {"space": space, **doc}
        return json.dumps(doc, indent=indent, sort_keys=False)

    @classmethod
    def from_json(cls, text: str) -> "Arch":
        """Read an Arch from ``to_json`` output, or from a plain ``{name: option}`` object."""
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise NASError(f"arch JSON is not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(doc, dict):
            raise NASError("arch JSON must be an object: {\"decisions\": {name: option, ...}}")
        values = doc.get("decisions", doc) if "decisions" in doc else doc
        if not isinstance(values, dict):
            raise NASError("arch JSON field 'decisions' must be an object of name -> option")
        return cls(values)
