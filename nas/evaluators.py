"""Evaluators give an Arch its quality (higher is better, accuracy in [0, 1])."""

from __future__ import annotations

import abc
import csv
import gzip
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from nas.arch import Arch
from nas.errors import NASError
from nas.registry import register_evaluator
from nas.space import Space


@dataclass
class Score:
    """What an evaluator says of one Arch. ``model`` is the trained network, if any."""

    quality: float
    metrics: dict = field(default_factory=dict)
    model: nn.Module | None = None


@dataclass(frozen=True)
class TrainingRecipe:
    """How a run trains a network from scratch (the ``train`` evaluator's settings):
    searchers that train networks of their own (a teacher, a fine-tuned result) use the
    same. ``device`` is a resolved ``torch.device``, never ``"auto"``."""

    epochs: int
    batch_size: int
    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    device: torch.device
    #: the forward pass's arithmetic: float32, or mixed precision (bfloat16; float16 on CUDA,
    #: with loss scaling); weights and the optimizer stay float32
    precision: str = "float32"


class Evaluator(abc.ABC):
    name: str = ""
    #: name of the quality metric (the ledger's first objective)
    metric: str = "accuracy"
    #: whether :meth:`bind` needs a data set
    needs_data: bool = False
    #: how this evaluator trains a network (None: it trains none)
    recipe: TrainingRecipe | None = None
    #: the data set :meth:`bind` was given
    data = None

    def bind(self, space: Space, data=None) -> None:
        """Check that this evaluator can score archs of ``space`` (NASError if not)."""
        self.space = space
        self.data = data
        if self.needs_data and data is None:
            raise NASError(f"evaluator {self.name!r} needs a data set")

    @abc.abstractmethod
    def evaluate(self, space: Space, arch: Arch) -> Score:
        """Score one (validated) arch of ``space``."""


def arch_seed(seed: int, arch: Arch) -> int:
    """A seed that depends on the run seed and the arch only, so an arch evaluated again
    (after a resume, or by another worker) gets exactly the same result."""
    digest = hashlib.sha256(f"{seed}:{arch.canonical_json()}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


class BenchmarkTable:
    """A tabular benchmark: table key -> quality (read from a CSV file, optionally gzipped)."""

    def __init__(self, rows: dict[str, float], metric: str, source: str):
        self.rows = rows
        self.metric = metric
        self.source = source

    @classmethod
    def from_csv(cls, path, key_column: str, value_column: str, scale: float = 1.0) -> "BenchmarkTable":
        path = Path(path)
        if not path.is_file():
            raise NASError(f"benchmark table {str(path)!r} does not exist")
        opener = gzip.open if path.suffix == ".gz" else open
        rows = {}
        with opener(path, "rt", newline="") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or key_column not in reader.fieldnames or value_column not in reader.fieldnames:
                raise NASError(f"benchmark table {str(path)!r} needs columns {key_column!r} and {value_column!r}; "
                               f"it has {reader.fieldnames}")
            for row in reader:
                try:
                    rows[row[key_column]] = float(row[value_column]) * scale
                except ValueError:
                    raise NASError(f"benchmark table {str(path)!r}: {value_column}={row[value_column]!r} "
                                   f"is not a number (row {reader.line_num})") from None
        if not rows:
            raise NASError(f"benchmark table {str(path)!r} has no rows")
        return cls(rows, value_column, str(path))

    def __len__(self):
        return len(self.rows)

    def lookup(self, key: str) -> float:
        try:
            return self.rows[key]
        except KeyError:
            raise NASError(f"benchmark table {self.source!r} has no entry {key!r}") from None

    def best(self) -> tuple[str, float]:
        key = max(self.rows, key=self.rows.__getitem__)
        return key, self.rows[key]


@register_evaluator("table")
class TableEvaluator(Evaluator):
    """Looks an Arch up in its space's benchmark table, or in a CSV given by ``path``;
    ``column`` (and ``key_column``, ``scale``) read another column than the space's
    default (null: the space's own; nb201: ``arch``, ``cifar10_test_acc`` in percent)."""

    def __init__(self, path: str | None = None, column: str | None = None, key_column: str | None = None,
                 scale: float | None = None):
        if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0):
            raise NASError(f"evaluator 'table': scale must be a number > 0, got {scale!r}")
        self.path, self.column, self.key_column, self.scale = path, column, key_column, scale
        self.table = None

    def bind(self, space, data=None):
        super().bind(space, data)
        space.require("table", "evaluator 'table'")
        # only the options given: a space written before they existed still takes ``path``
        given = {k: v for k, v in (("column", self.column), ("key_column", self.key_column), ("scale", self.scale))
                 if v is not None}
        self.table = space.benchmark_table(self.path, **given)
        self.metric = self.table.metric

    def evaluate(self, space, arch):
        return Score(self.table.lookup(space.table_key(arch)))
