"""Registries of plug-ins: spaces, searchers, cost models, evaluators, data sets.

A plug-in registers itself with a decorator (``@register_space("name")``) when its
module is imported, or is named in a package's entry points (group ``nas.spaces``,
``nas.searchers``, ``nas.cost_models``, ``nas.evaluators``, ``nas.datasets``). The
framework's own plug-ins are declared as entry points in ``pyproject.toml``, so the core
never imports a plug-in by name. Entry points are loaded the first time a registry is
read.
"""

from __future__ import annotations

import fnmatch
import importlib
import inspect
import math
import warnings
from importlib import metadata
from typing import Any, Callable

from nas.errors import NASError, one_of


class Registry:
    """A flat name -> factory table for one kind of plug-in."""

    def __init__(self, kind: str, entry_point_group: str):
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._table: dict[str, Any] = {}
        self._entry_points_loaded = False

    def register(self, name: str | None = None) -> Callable:
        """Decorator: ``@registry.register("name")`` on a class or factory function."""

        def decorate(obj):
            key = name or getattr(obj, "name", None) or obj.__name__.lower()
            existing = self._table.get(key)
            if existing is not None and existing is not obj and _qualname(existing) != _qualname(obj):
                raise NASError(
                    f"{self.kind} {key!r} is already registered by {_qualname(existing)}; "
                    f"pick another name for {_qualname(obj)}"
                )
            self._table[key] = obj
            if isinstance(obj, type) and not getattr(obj, "name", None):
                obj.name = key
            return obj

        return decorate

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in metadata.entry_points(group=self.entry_point_group):
            if ep.name in self._table:
                continue
            try:
                obj = ep.load()  # importing the module runs its decorators
            except Exception as exc:  # a broken third-party plug-in must not take the others down
                warnings.warn(f"{self.kind} plug-in {ep.name!r} ({ep.value}) failed to load: {exc}", stacklevel=2)
                continue
            self._table.setdefault(ep.name, obj)

    def names(self, pattern: str = "*") -> list[str]:
        self._load_entry_points()
        return sorted(n for n in self._table if fnmatch.fnmatch(n, pattern))

    def get(self, name: str):
        self._load_entry_points()
        try:
            return self._table[name]
        except KeyError:
            raise NASError(
                f"unknown {self.kind} {name!r}; registered {self.kind}s: {one_of(self.names())}"
            ) from None

    def __contains__(self, name: str) -> bool:
        self._load_entry_points()
        return name in self._table

    def create(self, name: str, **cfg):
        """Instantiate plug-in ``name`` with config fields ``cfg``; unknown fields are a NASError."""
        factory = self.get(name)
        check_fields(factory, cfg, f"{self.kind} {name!r}")
        return factory(**cfg)


def _qualname(obj) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def config_fields(factory) -> dict:
    """Keyword parameters of a plug-in constructor with their defaults (``None`` if required)."""
    sig = inspect.signature(factory)
    fields = {}
    for p in sig.parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name == "self":
            continue
        fields[p.name] = None if p.default is p.empty else p.default
    return fields


def check_fields(factory, cfg: dict, what: str) -> None:
    """``cfg`` against the factory's keyword parameters: known names, types judged by the
    defaults, numbers finite and not negative (except the names in the factory's
    ``signed_fields``)."""
    sig = inspect.signature(factory)
    if any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
        return
    defaults = config_fields(factory)
    unknown = [k for k in cfg if k not in defaults]
    if unknown:
        raise NASError(
            f"{what} has no field {unknown[0]!r}; its fields are: {', '.join(defaults) or '(none)'}"
        )
    for key, value in cfg.items():
        expected = _expected_type(defaults[key])
        if expected is None:
            continue
        if value is None:
            # null only where the field may be None (its annotation says so)
            annotation = str(sig.parameters[key].annotation)
            if "None" not in annotation and "Optional" not in annotation:
                raise NASError(f"{what} field {key!r} must be {expected}, got null")
        elif not _is_instance(value, expected):
            raise NASError(f"{what} field {key!r} must be {expected}, got {value!r}")
        elif expected in ("an integer", "a number"):
            if not math.isfinite(value):
                raise NASError(f"{what} field {key!r} must be a finite number, got {value!r}")
            if value < 0 and key not in getattr(factory, "signed_fields", ()):
                raise NASError(f"{what} field {key!r} must be >= 0, got {value!r}")


def _expected_type(default) -> str | None:
    """The type a config field takes, judged by its default (None: anything)."""
    if isinstance(default, bool):
        return "a boolean"
    if isinstance(default, int):
        return "an integer"
    if isinstance(default, float):
        return "a number"
    if isinstance(default, str):
        return "a string"
    if isinstance(default, (list, tuple)):
        return "a list"
    return None


def _is_instance(value, expected: str) -> bool:
    if expected == "a boolean":
        return isinstance(value, bool)
    if expected == "an integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if expected == "a number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected == "a string":
        return isinstance(value, str)
    return isinstance(value, (list, tuple))


def import_plugins(modules) -> None:
    """Import user modules so their ``@register_*`` decorators run (CLI ``plugins=[...]``)."""
    for mod in modules or []:
        try:
            importlib.import_module(mod)
        except ImportError as exc:
            raise NASError(f"cannot import plug-in module {mod!r}: {exc}") from None


def plugin_module(obj) -> str | None:
    """The module to import (``plugins=[...]``) for ``obj``'s class in another process: None
    for the package's own plug-ins and for classes defined in a script (``__main__``)."""
    module = type(obj).__module__
    return None if module.split(".")[0] in ("nas", "spaces", "searchers") or module == "__main__" else module


def plugins_in_overrides(argv: list[str]) -> list[str]:
    """The modules a ``plugins=[a,b]`` override names (imported before the config is
    composed, so their plug-ins' config nodes exist)."""
    for arg in argv:
        if arg.startswith("plugins="):
            value = arg.split("=", 1)[1].strip("[]")
            return [m.strip() for m in value.split(",") if m.strip()]
    return []


SPACES = Registry("space", "nas.spaces")
SEARCHERS = Registry("searcher", "nas.searchers")
COST_MODELS = Registry("cost model", "nas.cost_models")
EVALUATORS = Registry("evaluator", "nas.evaluators")
DATASETS = Registry("data set", "nas.datasets")

register_space = SPACES.register
register_searcher = SEARCHERS.register
register_cost_model = COST_MODELS.register
register_evaluator = EVALUATORS.register
register_dataset = DATASETS.register
