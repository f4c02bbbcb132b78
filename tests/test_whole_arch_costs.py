"""Cost models that price whole architectures: a CSV of measured costs per architecture
(``target=table``), budgets, the cheapest architecture, and searchers that price layers
refusing them."""

import csv
import json
import math

import numpy as np
import pytest
from conftest import run_cli
from torch import nn

import nas
from nas import Decision, NASError, OpSpec, Space
from nas.costs import TableCost


def chain_ms(space, arch) -> float:
    """A cost that does not add over layers: MACs plus a term growing with the number of
    convolution edges to the power 1.5 (as a device's scheduling might)."""
    convs = sum(1 for op in arch.values() if "conv" in str(op))
    return round(2.0 + 0.05 * sum(op.macs() for op in space.ops(arch)) / 1e6 + 0.3 * convs ** 1.5, 6)


@pytest.fixture(scope="module")
def nb201_costs(tmp_path_factory):
    """A CSV with every NAS-Bench-201 cell: its latency and a second accuracy column."""
    space = nas.get_space("nb201")
    table = space.benchmark_table()
    path = tmp_path_factory.mktemp("costs") / "nb201_device.csv"
    rows = {}
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["arch", "device_ms", "my_acc"])
        for arch in space.enumerate():
            key = space.table_key(arch)
            rows[key] = chain_ms(space, arch)
            writer.writerow([key, rows[key], 100 - 100 * table.lookup(key)])  # another column: the error
    return path, rows


def test_table_cost_prices_whole_archs_and_finds_the_cheapest(nb201_costs):
    path, rows = nb201_costs
    space = nas.get_space("nb201")
    cost = nas.get_cost_model("table", path=str(path), column="device_ms", unit="ms")
    assert not cost.additive
    rng = np.random.default_rng(0)
    for _ in range(20):
        arch = space.sample(rng)
        assert cost.arch_cost(space, arch) == rows[space.table_key(arch)]
    cheapest, arch, exact = cost.min_cost(space)
    assert exact and cheapest == min(rows.values()) and cost.arch_cost(space, arch) == cheapest
    # not additive: no layer has a cost of its own
    with pytest.raises(NASError, match="prices whole architectures, not layers"):
        cost.op_cost(space.ops(arch)[0])
    # a search under a budget: every evaluation priced from the table, the best within it
    budget = float(np.percentile(list(rows.values()), 25))
    result = nas.search(space, nas.get_searcher("random", n_evals=12), cost_model=cost, evaluator="table",
                        budget=budget, seed=3)
    assert result.n_evals == 12 and result.best.cost <= budget
    assert all(e.cost == rows[space.table_key(e.arch)] for e in result.history)
    assert all(e.feasible == (e.cost <= budget) for e in result.history)
    with pytest.raises(NASError, match=r"infeasible for space 'nb201': the cheapest architecture costs"):
        nas.search(space, nas.get_searcher("random", n_evals=2), cost_model=cost, evaluator="table",
                   budget=0.99 * cheapest)


def test_searchers_that_price_layers_refuse_a_whole_arch_model(nb201_costs):
    path, _ = nb201_costs
    cost = TableCost(str(path), "device_ms")
    for name in ("ilp", "differentiable"):
        with pytest.raises(NASError, match=f"searcher '{name}' prices layers, and cost model 'table' prices whole"):
            nas.get_searcher(name).check_cost_model(cost)
    for name in ("random", "optuna", "tunas"):
        nas.get_searcher(name).check_cost_model(cost)  # they price whole architectures


def test_table_cost_errors(tmp_path, nb201_costs):
    with pytest.raises(NASError, match="needs path=FILE .* and column=NAME"):
        TableCost(None, "device_ms")
    path, _ = nb201_costs
    with pytest.raises(NASError, match=r"needs columns 'arch' and 'watts'; it has \['arch', 'device_ms', 'my_acc'\]"):
        TableCost(str(path), "watts")
    partial = tmp_path / "partial.csv"
    partial.write_text("arch,device_ms\n" + "\n".join(path.read_text().splitlines()[1:6]) + "\n")
    cost = TableCost(str(partial), "device_ms")
    space = nas.get_space("nb201")
    missing = next(a for a in space.enumerate() if space.table_key(a) not in cost.table.rows)
    with pytest.raises(NASError, match="has no row for .* every architecture the search may propose needs one"):
        cost.arch_cost(space, missing)
    assert cost.min_cost(space)[2]  # the cheapest of its rows: the only archs it can price


class Widths(Space):
    """A space without table keys: the table's key column holds each Arch's JSON."""

    name = "test_widths"

    def _make_decisions(self):
        return [Decision("a", (4, 8, 16)), Decision("b", (4, 8))]

    def ops(self, arch):
        return [OpSpec.make("conv", "c1", c_in=self.in_channels, c_out=arch["a"], res=self.resolution, k=3),
                OpSpec.make("conv", "c2", c_in=arch["a"], c_out=arch["b"], res=self.resolution, k=3),
                OpSpec.make("gap", "gap", c_in=arch["b"], res=self.resolution),
                OpSpec.make("linear", "fc", c_in=arch["b"], c_out=self.num_classes)]

    def build(self, arch):
        return nn.Sequential(*(op.build() for op in self.ops(arch)))


def test_a_space_without_table_keys_uses_arch_json(tmp_path):
    space = Widths(8, 3, 2)
    path = tmp_path / "energy.csv"
    energy = {a.canonical_json(): a["a"] * a["b"] / 10 + (3.0 if a["a"] == 4 else 0.0) for a in space.enumerate()}
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["arch", "mJ"])
        writer.writerows(energy.items())
    cost = TableCost(str(path), "mJ", unit="mJ")
    cheapest, arch, exact = cost.min_cost(space)
    assert exact and cheapest == min(energy.values()) and arch["a"] == 8 and arch["b"] == 4


def test_cli_search_constrained_by_a_per_arch_table(tmp_path, cli_env, nb201_costs):
    path, rows = nb201_costs
    budget = float(np.median(list(rows.values())))
    args = ["space=nb201", "evaluator=table", "evaluator.column=my_acc", f"evaluator.path={path}",
            "evaluator.scale=1", "target=table", f"target.options.path={path}", "target.options.column=device_ms",
            "target.options.unit=ms", f"budget={budget}", "searcher=random", "searcher.n_evals=8", "progress=false",
            "run_name=t"]
    out = run_cli(args, tmp_path, cli_env)
    assert out.returncode == 0, out.stderr
    result = json.loads((tmp_path / "runs" / "t" / "result.json").read_text())
    space = nas.get_space("nb201")
    table = space.benchmark_table()
    for entry in result["history"]:
        arch = nas.Arch.from_json(json.dumps(entry["arch"]))
        key = space.table_key(arch)
        assert entry["cost"] == rows[key] and math.isclose(entry["quality"], 100 - 100 * table.lookup(key))
    assert result["best"]["cost"] <= budget
    assert "my_acc" in out.stdout and "ms (from nb201_device.csv, column device_ms)" in out.stdout
    assert (tmp_path / "runs" / "t" / "pareto.png").is_file() and not (tmp_path / "runs" / "t" / "layers.png").exists()
    # before any training: a searcher that prices layers refuses the table, in one line
    refused = run_cli(["space=afrb", "searcher=differentiable", "target=table", f"target.options.path={path}",
                       "target.options.column=device_ms", "run_name=d"], tmp_path, cli_env)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert "searcher 'differentiable' prices layers" in refused.stderr and not (tmp_path / "runs" / "d").exists()


def test_measured_cost_times_each_arch_once_per_machine(tmp_path, monkeypatch):
    import nas.lut as lut_mod

    space = Widths(8, 3, 2)
    timed = []
    real = lut_mod.measure_models
    monkeypatch.setattr(lut_mod, "measure_models", lambda sp, archs, *a, **k: timed.extend(archs) or real(sp, archs, *a, **k))
    quick = {"lut_dir": str(tmp_path), "rounds": 1, "min_run_time": 0.002}
    cost = nas.get_cost_model("measured", space=space, **quick)
    result = nas.search(space, nas.get_searcher("random", n_evals=4), cost_model=cost,
                        evaluator=FewerMACs(), seed=1)
    assert result.n_evals == 4 and all(e.cost > 0 for e in result.history)
    assert len(timed) == len({a.canonical_json() for a in timed}) == 4  # each candidate timed once
    doc = json.loads(cost.path.read_text())
    assert cost.path.parent == tmp_path / "measured" / space.name and doc["machine_id"] == cost.machine.id
    assert {e.arch.canonical_json(): e.cost for e in result.history} == {k: v["ms"] for k, v in doc["timings"].items()}
    # a later run on this machine reuses the timings
    timed.clear()
    again = nas.get_cost_model("measured", space=space, **quick)
    assert [again.arch_cost(space, e.arch) for e in result.history] == [e.cost for e in result.history]
    assert timed == []
    cheapest, arch, exact = again.min_cost(space)
    assert not exact and cheapest == again.arch_cost(space, arch)
    # another machine's file is refused, in one line
    doc["machine_id"] = "0123456789"
    cost.path.write_text(json.dumps(doc))
    with pytest.raises(NASError, match="holds another machine's timings"):
        nas.get_cost_model("measured", space=space, **quick)
    with pytest.raises(NASError, match="measured cost model times space 'test_widths' at its configuration"):
        nas.get_cost_model("measured", space=space, lut_dir=str(tmp_path / "b")).arch_cost(Widths(4, 3, 2), arch)


class FewerMACs(nas.Evaluator):
    """Quality without training: fewer MACs is better."""

    metric = "score"

    def evaluate(self, space, arch):
        return nas.Score(-sum(op.macs() for op in space.ops(arch)) / 1e6)
