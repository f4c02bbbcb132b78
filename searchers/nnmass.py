"""RAN-i's training-free scaling: rank candidates by NN-Mass within hardware budgets.

Every candidate (all archs of the space when it has at most ``n_candidates``, as
``convnext_scaled``'s 40 x 20 grid of width and depth multipliers does; otherwise
``n_candidates`` distinct seeded samples) is priced without training or forward passes:
MACs, parameters, the run's cost model (e.g. a latency LUT) and NN-Mass
(:mod:`nas.nnmass`). A candidate matches a budget when each metric the budget names is
within ``tolerance`` of the budget's value, on either side (RAN-i's Table 7 models sit
within 6% of their budgets, above and below). Per budget the matches are ranked by
NN-Mass; the ``top`` highest go through the run's evaluator (``nnmass`` by default: no
training; ``evaluator=train`` trains them), and the result lists every budget's ranking.
"""

from __future__ import annotations

import time
from collections import Counter

import numpy as np

from nas import NASError, Searcher, register_searcher
from nas.costs import format_cost
from nas.nnmass import nn_mass

BUDGET_METRICS = ("macs", "params", "cost")


def _parse_budgets(budgets) -> list[dict[str, float]]:
    parsed = []
    for i, budget in enumerate(budgets or ()):
        if not hasattr(budget, "items"):
            raise NASError(f"searcher.budgets[{i}] must be a mapping like {{macs: 3.3e9, params: 21e6}}, got {budget!r}")
        entry = {}
        for metric, value in budget.items():
            if metric not in BUDGET_METRICS:
                raise NASError(f"searcher.budgets[{i}] names {metric!r}; accepted: {', '.join(BUDGET_METRICS)}")
            try:
                entry[metric] = float(value)
            except (TypeError, ValueError):
                raise NASError(f"searcher.budgets[{i}].{metric} must be a number, got {value!r}") from None
            if not entry[metric] > 0:
                raise NASError(f"searcher.budgets[{i}].{metric} must be positive, got {value!r}")
        if not entry:
            raise NASError(f"searcher.budgets[{i}] is empty; name macs, params and/or cost")
        parsed.append(entry)
    if not parsed:
        raise NASError("searcher.budgets is empty; give at least one, e.g. [{macs: 3.3e9, params: 21e6}]")
    return parsed


def describe_budget(budget: dict, unit: str) -> str:
    words = {"macs": lambda v: format_cost(v, "MACs"), "params": lambda v: format_cost(v, "params"),
             "cost": lambda v: format_cost(v, unit)}
    return " / ".join(words[k](v) for k, v in budget.items())


@register_searcher("nnmass")
class NNMassSearch(Searcher):
    """Fields: ``budgets`` (RAN-i's three, Sec. 3.4; each names macs, params and/or cost in the
    target's unit), ``tolerance`` (a candidate matches a budget when every named metric is
    within this fraction of it), ``n_candidates`` (all archs of a space with at most this many,
    else this many seeded samples; RAN-i: 800), ``top`` (candidates per budget that go through
    the evaluator). Selects ``evaluator=nnmass`` (no training) unless the command line names one."""

    requires = ("topology",)
    config_defaults = {"evaluator": "nnmass"}

    def __init__(self, budgets: list = ({"macs": 3.3e9, "params": 21e6}, {"macs": 4.5e9, "params": 28e6},
                                        {"macs": 8.5e9, "params": 50e6}),
                 tolerance: float = 0.06, n_candidates: int = 800, top: int = 5):
        self.budgets = _parse_budgets(budgets)
        if not 0 <= tolerance < 1:
            raise NASError(f"searcher.tolerance must be in [0, 1), got {tolerance}")
        if n_candidates < 1 or top < 1:
            raise NASError(f"searcher.n_candidates and searcher.top must be >= 1, got {n_candidates} and {top}")
        self.tolerance = float(tolerance)
        self.n_candidates = int(n_candidates)
        self.top = int(top)

    def candidates(self, space, seed: int) -> list:
        """Distinct networks: every arch of a small space, else seeded samples."""
        if space.size() <= self.n_candidates:
            archs = (space.canonicalize(a) for a in space.enumerate())
        else:
            rng = np.random.default_rng(seed)
            archs = (space.sample(rng) for _ in range(50 * self.n_candidates))
        seen, out = set(), []
        for arch in archs:
            try:
                space.check(arch)
            except NASError:
                continue
            ops = tuple(space.ops(arch))
            if ops in seen:  # other multipliers that round to the same network
                continue
            seen.add(ops)
            out.append((arch, ops))
            if len(out) == self.n_candidates:
                break
        return out

    def score(self, problem, candidates) -> list[dict]:
        """MACs, params, cost and NN-Mass of every candidate (no training, no forward pass)."""
        space, cost_model = problem.space, problem.cost_model
        rows = []
        for arch, ops in candidates:
            counts = Counter(ops)
            rows.append({"arch": arch, "macs": sum(op.macs() * n for op, n in counts.items()),
                         "params": sum(op.num_params() * n for op, n in counts.items()),
                         "cost": cost_model.arch_cost(space, arch), "nn_mass": nn_mass(space.block_topologies(arch))})
        return rows

    def matches(self, rows: list[dict], budget: dict) -> list[dict]:
        tol = self.tolerance
        inside = [r for r in rows if all(abs(r[k] / v - 1) <= tol for k, v in budget.items())]
        return sorted(inside, key=lambda r: (-r["nn_mass"], r["macs"]))

    def search(self, problem):
        space = problem.space
        start = time.perf_counter()
        candidates = self.candidates(space, problem.seed)
        rows = self.score(problem, candidates)
        scoring_seconds = time.perf_counter() - start
        ranked = [self.matches(rows, b) for b in self.budgets]
        unit = problem.cost_model.unit
        problem.begin(sum(min(self.top, len(r)) for r in ranked), desc="nnmass")
        budgets, report = [], [f"{len(rows)} candidates priced in {scoring_seconds:.2f} s (MACs, params, "
                                f"{problem.cost_model.name or 'cost'} in {unit} and NN-Mass; no training)"]
        # one list, so workers sharing the ledger split the shortlists (evaluate_many)
        shortlist = [row["arch"] for matches in ranked for row in matches[: self.top]]
        quality_of = {e.arch.key(): e.quality for e in problem.evaluate_many(shortlist)}
        for budget, matches in zip(self.budgets, ranked):
            entries = []
            for rank, row in enumerate(matches[: self.top], start=1):
                entry = {"rank": rank, "arch": dict(row["arch"]), "macs": row["macs"], "params": row["params"],
                         "cost": row["cost"], "nn_mass": row["nn_mass"], "quality": quality_of[space.validate(row["arch"]).key()]}
                if hasattr(space, "shape"):
                    widths, depths = space.shape(row["arch"])
                    entry.update(widths=list(widths), depths=list(depths))
                entries.append(entry)
            budgets.append({"budget": budget, "tolerance": self.tolerance, "matches": len(matches),
                            "ranked": entries})
            report.append(f"budget {describe_budget(budget, unit)} (±{self.tolerance:.0%}): {len(matches)} "
                          f"of {len(rows)} candidates match")
            for e in entries:
                shape = f" widths {e['widths']} depths {e['depths']}" if "widths" in e else ""
                trained = "" if problem.evaluator.metric == "nn_mass" else \
                    f"  {problem.evaluator.metric} {e['quality']:.4g}"
                report.append(f"  {e['rank']}. NN-Mass {e['nn_mass']:.0f}  {format_cost(e['macs'], 'MACs')}  "
                              f"{format_cost(e['params'], 'params')}  {format_cost(e['cost'], unit)}{trained}  "
                              f"{dict(e['arch'])}{shape}")
        if not any(b["ranked"] for b in budgets):
            raise NASError(f"no candidate of space {space.name!r} is within ±{self.tolerance:.0%} of any budget "
                           f"({'; '.join(describe_budget(b, unit) for b in self.budgets)}); widen "
                           "searcher.tolerance or change the budgets")
        return problem.result(budgets=budgets, candidates=len(rows), scoring_seconds=scoring_seconds, report=report)
