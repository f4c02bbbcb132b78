"""HANT: the 197-op pool, the layerwise space, pretraining with resume, and the ilp searcher."""

import json

import optuna
import pytest
import torch

import nas
from nas import NASError
from nas.ledger import Ledger
from nas.search import SearchProblem
from nas.training.layerwise import DistillSettings, LayerwiseNet, distill, hold_out, loss_changes
from spaces.hant import HANT_POOL

SMALL_POOL = ["teacher", "identity", "efn_k3_e3", "efnv2_k3_e1_se0.04", "cb_res_k3", "cb_stack_k3_w0.5",
              "conv_cs_k1_w1", "repvgg_k3", "vit_d1_w32_h4", "bot_trans_e1", "lambda_e0.5"]


def small_space(**kw):
    kw.setdefault("teacher_arch", {})  # mbconv's default arch: a three-layer teacher
    return nas.get_space("hant", resolution=16, in_channels=3, num_classes=4, **kw)


def test_pool_has_197_ops_per_layer_each_mapping_the_teacher_shapes():
    space = nas.get_space("hant", resolution=12, in_channels=1, num_classes=10)
    assert len(HANT_POOL) == 197
    assert len(space.layers) >= 3 and any(t["stride"] == 2 for t in space.layers)
    for d in space.layer_decisions():
        assert len(d.options) == 197 and d.options[0] == "teacher"
    torch.manual_seed(0)
    families = set()
    for i, teacher in enumerate(space.layers):
        if i not in (0, 1):  # one stride-1 and one stride-2 layer are run; all are checked analytically
            assert all(space.candidate(i, o).out_shape() == teacher.out_shape() for o in HANT_POOL)
            continue
        for option in HANT_POOL:
            op = space.candidate(i, option)
            assert op.in_shape() == teacher.in_shape()
            module = op.build().eval()
            with torch.no_grad():
                out = module(torch.randn(2, *teacher.in_shape()))
            assert tuple(out.shape[1:]) == tuple(teacher.out_shape()), option
            families.add(op.kind)
    assert {"efn", "efnv2", "cb_stack", "cb_bottle", "cb_res", "repvgg", "conv_cs", "vit", "bot_trans",
            "lambda", "mbconv"} <= families


def test_identity_is_a_projection_where_shapes_change_and_parameter_free_otherwise():
    space = small_space()
    for i, t in enumerate(space.layers):
        op = space.candidate(i, "identity")
        same = t.in_shape() == t.out_shape()
        assert (op.kind == "identity") == same and space.parameter_free(i, "identity") == same
        assert space.parameter_free(i, "teacher") and not space.parameter_free(i, "efn_k3_e3")


def test_efficientnet_style_teacher_at_224():
    cfg = {"stem_channels": 32, "stage_strides": [1, 2, 2, 2, 1, 2, 1],
           "stage_widths": [[16], [24], [40], [80], [112], [192], [320]], "depths": [1, 2, 3, 4],
           "kernels": [3, 5], "expansions": [6]}
    arch = {f"s{s}_depth": d for s, d in zip(range(1, 8), [1, 2, 2, 3, 3, 4, 1])}  # EfficientNet-B0's stages
    space = nas.get_space("hant", resolution=224, num_classes=1000, in_channels=3, teacher_config=cfg,
                          teacher_arch=arch)
    assert len(space.layers) == 16 and space.layers[0].in_shape() == (32, 112, 112)
    for i in (0, 1, 15):
        for option in ("identity", "efn_k5_e6_se0.04", "cb_bottle_k3_w0.25", "vit_d1_w64_h4", "lambda_e1"):
            assert space.candidate(i, option).out_shape() == space.layers[i].out_shape()
    op = space.candidate(1, "efn_k3_e6_se0.04")  # 16 -> 24 channels, 112 -> 56 px
    with torch.no_grad():
        assert op.build().eval()(torch.randn(1, *op.in_shape())).shape == (1, 24, 56, 56)
    teacher = space.preset("teacher")
    assert sum(op.macs() for op in space.ops(teacher)) > 2e8  # ImageNet scale


def test_counts_of_composite_candidates_match_the_modules():
    from test_costs import measured_counts

    space = small_space(pool=SMALL_POOL)
    for i in range(len(space.layers)):
        for option in SMALL_POOL:
            op = space.candidate(i, option)
            macs, params, units = measured_counts(op.build(), op.in_shape())
            assert (op.macs(), op.num_params(), op.nonlinear()) == (macs, params, units), option


def test_bad_pool_and_teacher_are_named():
    with pytest.raises(NASError, match="unknown candidate op 'nope'.*registered"):
        small_space(pool=["teacher", "nope"])
    with pytest.raises(NASError, match="must contain 'teacher'"):
        small_space(pool=["identity"])
    with pytest.raises(NASError, match="not layer chains"):
        small_space(teacher_space="uib")
    with pytest.raises(NASError, match="teacher_space cannot be hant"):
        small_space(teacher_space="hant")


def test_min_cost_is_the_cheapest_op_of_every_layer():
    space = small_space(pool=SMALL_POOL)
    macs = nas.get_cost_model("macs")
    cost, arch, exact = space.min_cost(macs)
    assert exact and cost == min(macs.cost(space.ops(a)) for a in space.enumerate())


def _net(seed=0):
    torch.manual_seed(seed)
    return LayerwiseNet(small_space(pool=SMALL_POOL))


def test_distillation_resumes_to_the_uninterrupted_result(tmp_path):
    data = nas.get_dataset("synthetic", n=256, num_classes=4, resolution=16)
    options = [["teacher", "identity", "efn_k3_e3", "cb_res_k3", "vit_d1_w32_h4"]] * 3
    kw = dict(epochs=2, batch_size=32, lr=2e-3, seed=3, input_shape=(3, 16, 16), device=torch.device("cpu"),
              max_batches=3, every=1, show_progress=False)
    whole = _net()
    distill(whole, options, data, DistillSettings(checkpoint=tmp_path / "whole.pt", **kw))

    class Killed(Exception):
        pass

    def kill_at_4(step, mse):
        if step == 3:
            raise Killed

    ckpt = tmp_path / "part.pt"
    with pytest.raises(Killed):
        distill(_net(), options, data, DistillSettings(checkpoint=ckpt, **kw), on_step=kill_at_4)
    resumed = _net()
    distill(resumed, options, data, DistillSettings(checkpoint=ckpt, **kw))
    a, b = whole.candidates.state_dict(), resumed.candidates.state_dict()
    assert a.keys() == b.keys() and len(a) > 10
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the teacher is not touched, and candidates learned something
    assert torch.equal(whole.teacher.state_dict()["1.body.0.weight"], _net().teacher.state_dict()["1.body.0.weight"])


def test_loss_changes_are_zero_for_the_teacher_and_equal_a_swapped_network():
    net = _net()
    data = nas.get_dataset("synthetic", n=128, num_classes=4, resolution=16)
    x, y = data.batch(data.train, slice(0, 64), (3, 16, 16))
    options = [["teacher", "efn_k3_e3", "cb_res_k3"]] * 3
    net.add_candidates(options)
    base, deltas = loss_changes(net, options, x, y, batch_size=24)
    assert all(d[0] == 0 for d in deltas)
    arch = net.space.preset("teacher").replace(layer3="cb_res_k3")
    net.eval()
    with torch.no_grad():
        swapped = torch.nn.functional.cross_entropy(net(x, arch), y).item()
        teacher = torch.nn.functional.cross_entropy(net(x), y).item()
    assert base == pytest.approx(teacher, abs=1e-5)
    assert deltas[2][2] == pytest.approx(swapped - teacher, abs=1e-5)
    # an extracted network is the same function, with the layout of the space's own build
    # (a run saves it and nas.load / the ONNX export rebuild it from the arch)
    with torch.no_grad():
        assert torch.allclose(net.extract(arch).eval()(x), net(x, arch), atol=1e-6)
    built = net.space.build(arch)
    built.load_state_dict(net.extract(arch).state_dict())
    with torch.no_grad():
        assert torch.allclose(built.eval()(x), net(x, arch), atol=1e-6)


def test_hold_out_is_disjoint_and_seeded():
    data = nas.get_dataset("synthetic", n=100, num_classes=4, resolution=8)
    rest, held = hold_out(data, 20, seed=1)
    assert len(held) == 20 and len(rest.train) == len(data.train) - 20 and len(rest.val) == len(data.val)
    assert torch.equal(held.x, hold_out(data, 20, seed=1)[1].x)
    with pytest.raises(NASError, match="held_out"):
        hold_out(data, len(data.train), seed=1)


def _problem(space, budget=None, work_dir=None, epochs=1):
    data = nas.get_dataset("synthetic", n=400, num_classes=4, resolution=16)
    ev = nas.get_evaluator("train", epochs=epochs, batch_size=64)
    ev.bind(space, data)
    return SearchProblem(space, nas.get_cost_model("macs"), ev, Ledger(space, "t", "memory"), budget, 0, show_progress=False,
                         work_dir=work_dir)


def test_ilp_searcher_selections_respect_budget_and_overlap(tmp_path):
    space = small_space(pool=SMALL_POOL, teacher_arch={"s1_b1_expansion": 6, "s2_b1_expansion": 6,
                                                        "s3_b1_expansion": 6})
    searcher = nas.get_searcher("ilp", k=4, overlap=1, teacher_epochs=1, pretrain_batches=3, held_out=96,
                                finetune_epochs=1, measure_latency=False)
    problem = _problem(space, work_dir=tmp_path)
    result = nas.run_search(searcher, problem)
    teacher_cost = result.extras["teacher"]["cost"]
    budget = 0.6 * teacher_cost
    sels = result.extras["selections"]
    assert 1 <= len(sels) <= 4 and result.extras["budget_used"] == pytest.approx(budget)
    for s in sels:
        assert s["cost"] <= budget + 1e-6 and s["proven_gap"] <= 1e-3 + 1e-12
        assert problem.cost(nas.Arch(s["arch"])) == pytest.approx(s["cost"])
    for i, s in enumerate(sels):
        for t in sels[:i]:
            assert sum(s["arch"][k] == t["arch"][k] for k in s["arch"]) <= 1
    assert [e.arch for e in result.history] == [space.preset("teacher"), nas.Arch(sels[result.extras["chosen_solution"] - 1]["arch"])]
    assert result.budget == pytest.approx(budget) and not result.history[0].feasible  # the teacher is over it
    assert result.best == result.history[1] and (tmp_path / "hant" / "candidates.pt").exists()
    assert (tmp_path / "hant" / "teacher.pt").exists()
    # the selections and the pretraining as the dashboard plots them ("<run>:progress")
    progress = {t.user_attrs["quantity"]: t for t in optuna.load_study(
        study_name="t:progress", storage=problem.ledger.storage).get_trials()}
    assert progress["selection: objective"].intermediate_values == pytest.approx(
        {i + 1: s["objective"] for i, s in enumerate(sels)})
    assert progress["selection: held-out loss"].value == pytest.approx(sels[-1]["held_out_loss"])
    layers = {q for q in progress if q.startswith("pretraining: mean MSE layer ")}
    assert layers == {f"pretraining: mean MSE layer {i}" for i in range(1, len(space.layer_decisions()) + 1)}
    assert all(list(progress[q].intermediate_values) == [0] for q in layers)  # every 10 steps; 3 were taken


def test_ilp_searcher_zero_shot_and_infeasible_budget():
    space = small_space(pool=SMALL_POOL)
    zero = nas.get_searcher("ilp", k=2, zero_shot=True, budget_ratio=1.0, teacher_epochs=1, held_out=96, finetune_epochs=1,
                            measure_latency=False)
    problem = _problem(space)
    result = nas.run_search(zero, problem)
    assert len(result.extras["selections"]) == 2
    for s in result.extras["selections"]:
        assert all(v in ("teacher", "identity") for v in s["arch"].values())
        assert all(space.parameter_free(i, v) for i, v in enumerate(s["arch"].values()))
    cheapest = problem.cost_model.cost(space.fixed_ops()) + sum(
        min(problem.cost_model.op_cost(space.candidate(i, o)) for o in ("teacher", "identity")
            if space.parameter_free(i, o)) for i in range(len(space.layers)))
    with pytest.raises(NASError, match=f"infeasible with zero_shot.*smallest achievable cost is .*\\({cheapest:g}\\)"):
        nas.run_search(zero, _problem(space, budget=cheapest * 0.99))


def test_cli_hant_ilp_end_to_end(tmp_path, cli_env):
    from conftest import run_cli

    args = ["space=hant", "space.resolution=16", "space.in_channels=3", "space.num_classes=4",
            f"space.pool=[{','.join(SMALL_POOL)}]", "searcher=ilp", "searcher.k=3", "searcher.teacher_epochs=1",
            "searcher.pretrain_batches=3", "searcher.held_out=64", "searcher.finetune_epochs=1", "data=synthetic",
            "data.n=300", "evaluator.epochs=1", "target=macs", "searcher.time_limit=2", "progress=false",
            "run_name=h"]
    out = run_cli(args, tmp_path, cli_env)
    assert out.returncode == 0, out.stderr
    assert "teacher (trained here" in out.stdout and "after fine-tuning with distillation" in out.stdout
    assert "ONNX export failed" not in out.stdout  # the fine-tuned network loads into the space's build
    assert "3 selections under" in out.stdout and "proven gap median" in out.stdout and "stopped at their time, 2 s per selection on average" in out.stdout
    result = json.loads((tmp_path / "runs" / "h" / "result.json").read_text())
    assert result["searcher"] == "ilp" and result["weights"] == "model.pt"
    bad = run_cli(args[:-1] + ["run_name=h2", "budget=1"], tmp_path, cli_env)
    assert bad.returncode == 2 and "infeasible" in bad.stderr and "Traceback" not in bad.stderr
    bad = run_cli(args[:-1] + ["run_name=h3", "searcher.time_limit=0"], tmp_path, cli_env)
    assert bad.returncode == 2 and "searcher.time_limit must be > 0 seconds" in bad.stderr


class TwoLayerTeacher(nas.Space):
    """A layerwise space written from scratch: a conv teacher whose two middle layers may
    become a 1x1 conv or a 5x5 conv (no HANT code involved)."""

    OPTIONS = ("teacher", "conv1", "conv5")

    def __init__(self, resolution=8, num_classes=3, in_channels=3):
        super().__init__(resolution, num_classes, in_channels)
        r = resolution
        self.prefix = [nas.OpSpec.make("conv", "stem", c_in=in_channels, c_out=8, res=r, k=3, act="relu")]
        self.layers = [nas.OpSpec.make("conv", f"l{i}", c_in=8, c_out=8, res=r, k=3, act="relu") for i in (1, 2)]
        self.suffix = [nas.OpSpec.make("gap", "pool", c_in=8, res=r),
                       nas.OpSpec.make("linear", "fc", c_in=8, c_out=num_classes)]

    reference_option = "teacher"

    def _make_decisions(self):
        return [nas.Decision(f"l{i}", self.OPTIONS, tag="layer") for i in (1, 2)]


    def layer_decisions(self):
        return self.decisions("layer")

    def teacher_chain(self):
        return self.prefix, self.layers, self.suffix

    def layer_ops(self, layer, option):
        k = {"teacher": 3, "conv1": 1, "conv5": 5}[option]
        return [nas.OpSpec.make("conv", f"l{layer + 1}", c_in=8, c_out=8, res=self.resolution, k=k, act="relu")]

    def fixed_ops(self):
        return self.prefix + self.suffix

    def parameter_free(self, layer, option):
        return option == "teacher"

    def ops(self, arch):
        return self.prefix + [op for i, d in enumerate(self.decisions()) for op in self.layer_ops(i, arch[d.name])] \
            + self.suffix

    def build(self, arch):
        from nas.ops import build_sequential

        return build_sequential(self.ops(arch))


def test_ilp_searcher_runs_on_any_layerwise_space():
    space = TwoLayerTeacher()
    data = nas.get_dataset("synthetic", n=300, num_classes=3, resolution=8)
    ev = nas.get_evaluator("train", epochs=1, batch_size=64)
    ev.bind(space, data)
    problem = SearchProblem(space, nas.get_cost_model("macs"), ev, Ledger(space, "t", "memory"), None, 0, show_progress=False)
    searcher = nas.get_searcher("ilp", k=3, overlap=1, budget_ratio=0.8, teacher_epochs=1, pretrain_batches=2,
                                held_out=64, finetune_epochs=1, measure_latency=False)
    result = nas.run_search(searcher, problem)
    # 8x8 maps: conv1 costs 1/9 of the teacher's 3x3, conv5 is pruned as costlier
    sels = result.extras["selections"]
    assert result.extras["candidates_searched"] == 4 and len(sels) == 3
    assert {tuple(s["arch"].values()) for s in sels} == {("conv1", "conv1"), ("conv1", "teacher"),
                                                          ("teacher", "conv1")}
    assert result.best is result.history[1] and result.best.cost < result.history[0].cost
