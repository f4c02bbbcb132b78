"""DeepReDuce with ReLU-reuse (DeepReShape's Algorithm 2) as the searcher ``deepreduce``."""

import json

import pytest

import nas
from nas import NASError
from nas.evaluators import Evaluator, Score
from nas.training.evaluator import TrainEvaluator


@pytest.fixture(scope="module")
def data():
    return nas.get_dataset("synthetic", n=256)


def relu_space(data, **kw):
    return nas.get_space("relu_reuse", resolution=data.resolution, in_channels=data.in_channels,
                         num_classes=data.num_classes, **kw)


def train_evaluator(data, space):
    ev = TrainEvaluator(epochs=1, batch_size=64, lr=0.05, device="cpu")
    ev.bind(space, data)
    return ev


def test_algorithm_2_networks_and_their_relus(data):
    space = relu_space(data)
    result = nas.search(space, nas.get_searcher("deepreduce"), cost_model="relu",
                        evaluator=train_evaluator(data, space), data=data, seed=0)
    rows = {r["name"]: r for r in result.extras["networks"]}
    assert list(rows) == ["base", "Net", "Net^T", "Net^C", "Net^R4", "Net^R8", "Net^R16"]
    base = rows["base"]["stage_relus"]
    hw = data.resolution ** 2
    # ResNet18 (m = 16): the stem and four ReLUs per block pair, the resolution halving per stage.
    assert base == [16 * hw * 5, 32 * hw // 4 * 4, 64 * hw // 16 * 4, 128 * hw // 64 * 4]
    # S1, the least critical of the default order S3 > S2 > S4 > S1, holds the most ReLUs: culled.
    assert result.extras["culled_stage"] == 1
    assert rows["Net"]["stage_relus"] == [16 * hw, *base[1:]]
    thinned = [16 * hw, *(c // 2 for c in base[1:])]
    assert rows["Net^T"]["stage_relus"] == thinned
    assert rows["Net^C"]["stage_relus"] == [c // 2 for c in thinned]
    for n in (4, 8, 16):
        assert rows[f"Net^R{n}"]["stage_relus"] == [16 * hw, *(c // n for c in thinned[1:])]
    # The cost is the ReLU count, and the result's front is that of every network trained.
    assert all(r["cost"] == r["relus"] for r in rows.values())
    assert result.n_evals == 7
    front = {e.arch.key() for e in result.pareto}
    for e in result.history:
        dominated = any(o.quality >= e.quality and o.cost <= e.cost and (o.quality > e.quality or o.cost < e.cost)
                        for o in result.history)
        assert (e.arch.key() in front) == (not dominated)


def test_distillation_uses_the_trained_base(data):
    space = relu_space(data)
    ev = train_evaluator(data, space)
    result = nas.search(space, nas.get_searcher("deepreduce", reuse_factors=[4]), cost_model="relu",
                        evaluator=ev, data=data, seed=0)
    thinned = next(r for r in result.extras["networks"] if r["name"] == "Net^T")
    evaluation = next(e for e in result.history if e.arch.key() == space.validate(thinned["arch"]).key())
    without = ev.evaluate(space, space.validate(thinned["arch"]))
    assert evaluation.metrics["val_loss"] != pytest.approx(without.metrics["val_loss"], rel=1e-6)
    # the same distillation by hand, from a teacher trained exactly as the base was
    teacher = ev.evaluate(space, space.validate(result.extras["networks"][0]["arch"])).model
    again = ev.evaluate(space, space.validate(thinned["arch"]), teacher=teacher, distill_weight=0.9, temperature=4.0)
    assert evaluation.metrics["val_loss"] == pytest.approx(again.metrics["val_loss"], rel=1e-6)


class StageWeightedReLUs(Evaluator):
    """Quality = ReLUs kept per stage, weighted: a stand-in for training with a known criticality."""

    name = "stage_weighted"

    def __init__(self, weights):
        self.weights = weights

    def evaluate(self, space, arch):
        relus = space.stage_relus(arch)
        return Score(sum(w * r for w, r in zip(self.weights, relus)) / 1e6)


def test_measured_criticality_and_no_cull_when_least_critical_is_not_largest(data):
    space = relu_space(data)
    # Per ReLU kept, S4 matters most, then S3, S2, S1 (S1's weight small enough to outweigh
    # its larger count), so the measured order is S4 > S3 > S2 > S1.
    weights = [0.01, 2.0, 8.0, 40.0]
    result = nas.search(space, nas.get_searcher("deepreduce", measure_criticality=True, distill=False),
                        cost_model="relu", evaluator=StageWeightedReLUs(weights), data=data, seed=0)
    hw = data.resolution ** 2
    alone = {k: weights[k - 1] * c / 1e6 for k, c in
             enumerate([16 * hw * 5, 32 * hw, 64 * hw // 4, 128 * hw // 16], start=1)}
    # Stage-only networks keep the stem's ReLUs (counted in S1) too.
    alone = {k: v + (weights[0] * 16 * hw / 1e6 if k != 1 else 0) for k, v in alone.items()}
    expected = sorted(alone, key=lambda k: -alone[k])
    assert result.extras["criticality"] == expected
    assert result.extras["stage_accuracy"] == {k: pytest.approx(v) for k, v in alone.items()}
    assert expected[-1] == 1 and result.extras["culled_stage"] == 1
    # an order whose least critical stage is not the largest: nothing is culled
    result = nas.search(space, nas.get_searcher("deepreduce", criticality=[1, 2, 3, 4], distill=False),
                        cost_model="relu", evaluator=StageWeightedReLUs(weights), data=data, seed=0)
    assert result.extras["culled_stage"] is None
    rows = {r["name"]: r for r in result.extras["networks"]}
    assert rows["Net (nothing culled)"]["arch"] == rows["base"]["arch"]


def test_clear_errors(data):
    space = relu_space(data)
    with pytest.raises(NASError, match="needs evaluator=train"):
        nas.search(space, "deepreduce", cost_model="relu", evaluator=StageWeightedReLUs([1, 1, 1, 1]), data=data)
    with pytest.raises(NASError, match="stages 1..4 once each"):
        nas.search(space, nas.get_searcher("deepreduce", criticality=[1, 2, 2, 4], distill=False),
                   cost_model="relu", evaluator=StageWeightedReLUs([1, 1, 1, 1]), data=data)
    with pytest.raises(NASError, match="'thin_reuse4'.*leaves out"):
        nas.search(relu_space(data, treatments=["keep", "thin", "cull"]),
                   nas.get_searcher("deepreduce", distill=False), cost_model="relu",
                   evaluator=StageWeightedReLUs([1, 1, 1, 1]), data=data)
    with pytest.raises(NASError, match="relu_stages"):
        nas.search("nb201", "deepreduce", cost_model="macs", evaluator="train", data=data)
    with pytest.raises(NASError, match="channel_scale"):
        nas.get_searcher("deepreduce", channel_scale=2)
    with pytest.raises(NASError, match="searcher.base='resnet99' is neither a preset"):
        nas.search(space, nas.get_searcher("deepreduce", base="resnet99", distill=False), cost_model="relu",
                   evaluator=StageWeightedReLUs([1, 1, 1, 1]), data=data)


def test_cli_run_on_relu_target_and_resume(tmp_path, cli_env):
    from conftest import run_cli

    args = ["space=relu_reuse", "searcher=deepreduce", "data=synthetic", "data.n=128", "evaluator.epochs=1",
            "searcher.reuse_factors=[4]", "progress=false", "run_name=d"]
    out = run_cli(args, tmp_path, cli_env)
    assert out.returncode == 0, out.stderr
    assert "culled: S1" in out.stdout and "Net^R4" in out.stdout
    run_dir = tmp_path / "runs" / "d"
    assert (run_dir / "deepreduce" / "teacher.pt").is_file()
    result = json.loads((run_dir / "result.json").read_text())
    assert [r["name"] for r in result["networks"]] == ["base", "Net", "Net^T", "Net^C", "Net^R4"]
    # the searcher's default target is relu: every cost is the network's ReLU count
    assert all(r["cost"] == r["relus"] for r in result["networks"])
    again = run_cli(args, tmp_path, cli_env)
    assert again.returncode == 0 and "5 read back from the ledger" in again.stdout
    assert json.loads((run_dir / "result.json").read_text())["networks"] == result["networks"]
