"""Fast LUTs: measure a designed subset of a space's OpSpecs and predict the rest.

A full build times every OpSpec (691 for ``uib``, 13 minutes on a 2-core machine); a
user's first run on a new machine cannot wait for that. Most of those OpSpecs are the
same layer at other sizes: a depthwise 5x5 stride-2 convolution at 14 different channel
counts and resolutions. On a single CPU thread, such a *family* (one op kind with the
same discrete settings: kernel, stride, activation, depthwise or dense) runs in
``a + b * MACs + c * memory`` milliseconds to within a few per cent, while one line
across the families is 20-25% off. So:

- :func:`design` picks what to measure: every op of a rare kind and every op most
  networks contain (the stem, the head), the extremes and the most spread-out points of
  each large family, then points spread over each kind's whole feature space.
- :class:`OpPredictor` predicts an unmeasured op from its family's line where the family
  has enough measured points, else from the kind's log-linear model of the op's counts and
  parameters, moved by the family's mean residual where it has any.

The whole-model calibration (overhead and in-context scale) is then fitted on measured
models exactly as for a full table, which also absorbs a bias common to the predictions.
"""

from __future__ import annotations

import collections
import math
from typing import Mapping, Sequence

import numpy as np

from nas.ops import OpSpec

#: parameters that size an op (where it sits in a network) rather than choose it
SIZE_PARAMS = frozenset({"c_in", "c_out", "c_mid", "c_feat", "classes", "res", "channels", "width"})
#: an int parameter with more distinct values than this, within a kind, is a size too
MAX_CHOICES = 6
#: a family's own line is fitted from this many measured points on (else the kind's model)
MIN_FAMILY_POINTS = 4
#: a kind with at most this many OpSpecs is measured whole
SMALL_KIND = 6
#: an op in at least this share of random networks is measured (it is in every prediction)
COMMON_SHARE = 0.5


def _groups(op: OpSpec):
    """Convolution groups as a choice: depthwise, grouped or dense (the count follows c_in)."""
    g, c_in = op.get("groups"), op.get("c_in")
    if g is None or g == 1:
        return 1
    return "depthwise" if g == c_in else "grouped"


def size_params(ops: Sequence[OpSpec]) -> dict[str, frozenset]:
    """Per kind, the parameters that size its ops: the known size names, ``groups``, and
    numeric parameters with more than MAX_CHOICES distinct values among ``ops``."""
    values = collections.defaultdict(lambda: collections.defaultdict(set))
    for op in ops:
        for k, v in op.params:
            values[op.kind][k].add(v)
    out = {}
    for kind, params in values.items():
        out[kind] = frozenset(k for k, vs in params.items() if k in SIZE_PARAMS or k == "groups" or (
            all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vs) and len(vs) > MAX_CHOICES))
    return out


def family(op: OpSpec, sizes: Mapping[str, frozenset]) -> tuple:
    """The op's kind and its discrete choices (its line in MACs and memory)."""
    choices = tuple((k, v) for k, v in op.params if k not in sizes.get(op.kind, ()))
    return (op.kind, _groups(op)) + choices


def features(op: OpSpec, sizes: Mapping[str, frozenset]) -> dict[str, float]:
    """Log counts, log numeric parameters and one-hot choices: the kind model's inputs."""
    f = {"macs": math.log1p(op.macs()), "memory": math.log1p(op.memory_elements()),
         "params": math.log1p(op.num_params()), "nonlinear": math.log1p(op.nonlinear()),
         f"groups={_groups(op)}": 1.0}
    for k, v in op.params:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            f[k] = math.log1p(abs(v))
            if k not in sizes.get(op.kind, ()):
                f[f"{k}={v}"] = 1.0
        elif k != "groups":
            f[f"{k}={v}"] = 1.0
    return f


def _matrix(ops, sizes, names=None):
    rows = [features(op, sizes) for op in ops]
    names = names or sorted({n for r in rows for n in r})
    return np.array([[r.get(n, 0.0) for n in names] for r in rows]), names


def _farthest(x: np.ndarray, k: int, chosen: Sequence[int] = ()) -> list[int]:
    """``k`` more row indices of ``x``, each the farthest from those chosen so far
    (starting from the largest and smallest first column when nothing is chosen)."""
    picked = list(chosen)
    if not picked and k > 0:
        picked.append(int(np.argmax(x[:, 0])))
    if len(picked) == len(chosen) + 1 and k > 1 and len(x) > 1:
        picked.append(int(np.argmin(x[:, 0])))
    dist = np.full(len(x), np.inf)
    for i in picked:
        dist = np.minimum(dist, np.linalg.norm(x - x[i], axis=1))
    while len(picked) - len(chosen) < k and dist.max() > 0:
        i = int(np.argmax(dist))
        picked.append(i)
        dist = np.minimum(dist, np.linalg.norm(x - x[i], axis=1))
    return picked[len(chosen):]


def _standardized(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(0)) / (x.std(0) + 1e-9)


def design(ops: Sequence[OpSpec], share: Mapping[str, float], n: int) -> list[OpSpec]:
    """The OpSpecs to measure, at least ``n`` of them (fewer only when ``ops`` is smaller).

    ``share`` maps an op key to the share of random networks that contain it. Deterministic:
    the same ops and shares give the same design.
    """
    ops = sorted(set(ops), key=lambda o: o.key)
    sizes = size_params(ops)
    by_kind, by_family = collections.defaultdict(list), collections.defaultdict(list)
    for op in ops:
        by_kind[op.kind].append(op)
        by_family[family(op, sizes)].append(op)
    chosen: dict[str, OpSpec] = {}
    for op in ops:  # always: ops of rare kinds, ops (nearly) every network has
        if len(by_kind[op.kind]) <= SMALL_KIND or share.get(op.key, 0.0) >= COMMON_SHARE:
            chosen[op.key] = op
    big = [fam for fam, members in by_family.items() if len(members) > MIN_FAMILY_POINTS + 2]
    per_family = max(MIN_FAMILY_POINTS, (n - len(chosen)) // max(1, len(big)) if big else 0)
    per_family = min(per_family, MIN_FAMILY_POINTS + 2)
    for fam in big:  # enough of each large family for its own line, spread over its sizes
        members = by_family[fam]
        x = np.array([[math.log1p(o.macs()), math.log1p(o.memory_elements())] for o in members])
        have = [i for i, o in enumerate(members) if o.key in chosen]
        for i in _farthest(_standardized(x), max(0, per_family - len(have)), have):
            chosen[members[i].key] = members[i]
    # the rest of the budget: points spread over each kind's features, kinds in turn
    spaces = {}
    for kind, members in by_kind.items():
        if len(members) > SMALL_KIND:
            x, _ = _matrix(members, sizes)
            spaces[kind] = (members, _standardized(x))
    while len(chosen) < min(n, len(ops)):
        grew = False
        for kind, (members, x) in sorted(spaces.items(), key=lambda kv: -len(kv[1][0])):
            if len(chosen) >= n:
                break
            have = [i for i, o in enumerate(members) if o.key in chosen]
            if len(have) == len(members):
                continue
            for i in _farthest(x, 1, have):
                if members[i].key not in chosen:
                    chosen[members[i].key] = members[i]
                    grew = True
        if not grew:
            break
    return sorted(chosen.values(), key=lambda o: o.key)


class OpPredictor:
    """Latency of unmeasured OpSpecs from measured ones (see the module docstring).

    ``prior`` (op key -> ms), where given, is another machine's table of the same ops (a
    shipped reference LUT): an op it holds is predicted as its prior latency times this
    machine's ratio to it, the family's mean log-ratio over its measured ops shrunk toward
    the kind's. Processors differ by more than a constant (1.7x on average between two
    Xeons here, 26% spread across ops), but ops of one family move together: on ``uib``
    with 20% measured, the ranks of whole networks then follow a full table of this
    machine to Spearman 0.996 (0.985 from the op's features alone)."""

    def __init__(self, measured: Mapping[OpSpec, float], ridge: float = 1.0,
                 prior: Mapping[str, float] | None = None):
        if not measured:
            raise ValueError("OpPredictor needs measured ops")
        self.measured = {op.key: float(ms) for op, ms in measured.items()}
        ops = list(measured)
        self.sizes = size_params(ops)
        self.prior = {k: float(v) for k, v in (prior or {}).items() if v > 0}
        self._fit_prior_ratios(ops)
        self.kind_models, self.family_lines, self.family_offsets = {}, {}, {}
        by_kind, by_family = collections.defaultdict(list), collections.defaultdict(list)
        for op in ops:
            by_kind[op.kind].append(op)
            by_family[family(op, self.sizes)].append(op)
        for kind, members in by_kind.items():
            x, names = _matrix(members, self.sizes)
            y = np.log([self.measured[o.key] for o in members])
            mu, sd = x.mean(0), x.std(0) + 1e-9
            design_matrix = np.c_[np.ones(len(x)), (x - mu) / sd]
            penalty = ridge * np.eye(design_matrix.shape[1])
            penalty[0, 0] = 0.0  # the intercept is not shrunk
            w = np.linalg.solve(design_matrix.T @ design_matrix + penalty, design_matrix.T @ y)
            self.kind_models[kind] = (names, mu, sd, w)
        for fam, members in by_family.items():
            y = np.array([self.measured[o.key] for o in members])
            if len(members) >= MIN_FAMILY_POINTS:
                x = np.array([self._line_inputs(o) for o in members])
                # least squares on relative error: a 0.05 ms op counts as much as a 2 ms one
                line, *_ = np.linalg.lstsq(x / y[:, None], np.ones(len(y)), rcond=None)
                self.family_lines[fam] = (line, float(y.min()))
            residual = np.log(y) - np.log([self._kind_prediction(o) for o in members])
            # shrunk toward 0 by one pseudo-observation: one measured point moves half way
            self.family_offsets[fam] = float(residual.sum() / (len(residual) + 1))

    def _fit_prior_ratios(self, ops) -> None:
        """Mean log-ratios of measured to prior latency, per family and per kind."""
        by_family, by_kind = collections.defaultdict(list), collections.defaultdict(list)
        for op in ops:
            if op.key in self.prior:
                r = math.log(self.measured[op.key] / self.prior[op.key])
                by_family[family(op, self.sizes)].append(r)
                by_kind[op.kind].append(r)
        every = [r for rs in by_kind.values() for r in rs]
        overall = float(np.mean(every)) if every else 0.0
        self.kind_ratios = {k: float(np.mean(rs)) for k, rs in by_kind.items()}
        self.overall_ratio = overall
        self.family_ratio_logs = dict(by_family)

    def _prior_prediction(self, op: OpSpec) -> float:
        kind = self.kind_ratios.get(op.kind, self.overall_ratio)
        logs = self.family_ratio_logs.get(family(op, self.sizes), [])
        # shrunk toward the kind's ratio by one pseudo-observation
        return self.prior[op.key] * math.exp((sum(logs) + kind) / (len(logs) + 1))

    @staticmethod
    def _line_inputs(op: OpSpec) -> np.ndarray:
        return np.array([1.0, op.macs() / 1e6, op.memory_elements() / 1e5])

    def _kind_prediction(self, op: OpSpec) -> float:
        names, mu, sd, w = self.kind_models[op.kind]
        f = features(op, self.sizes)
        x = (np.array([f.get(n, 0.0) for n in names]) - mu) / sd
        return float(np.exp(w[0] + x @ w[1:]))

    def can_predict(self, op: OpSpec) -> bool:
        return op.key in self.measured or op.kind in self.kind_models

    def predict(self, op: OpSpec) -> float:
        """Milliseconds: the measurement where there is one, else the prediction."""
        if op.key in self.measured:
            return self.measured[op.key]
        if op.key in self.prior and self.kind_ratios:
            return self._prior_prediction(op)
        fam = family(op, self.sizes)
        if fam in self.family_lines:
            line, smallest = self.family_lines[fam]
            # a line extrapolated below its smallest point may reach 0; no layer is free
            return float(max(self._line_inputs(op) @ line, 0.5 * smallest))
        return self._kind_prediction(op) * math.exp(self.family_offsets.get(fam, 0.0))

    def source(self, op: OpSpec) -> str:
        """How :meth:`predict` prices ``op``: measured, prior, family, kind+family or kind."""
        if op.key in self.measured:
            return "measured"
        if op.key in self.prior and self.kind_ratios:
            return "prior"
        fam = family(op, self.sizes)
        if fam in self.family_lines:
            return "family"
        return "kind+family" if fam in self.family_offsets else "kind"
