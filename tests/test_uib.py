"""The UIB space (MobileNetV4), its weight-sharing supernet, and the TuNAS searcher."""

import itertools

import numpy as np
import optuna
import pytest
import torch
from torch import nn

import nas
from nas import NASError
from nas.ops import make_divisible
from searchers.tunas import Controller, most_probable_within
from spaces.uib import block_layers, parse_blocks


def small_space(**kw):
    return nas.get_space("uib", resolution=32, in_channels=3, num_classes=10, **kw)


@pytest.mark.parametrize("name, params, macs", [("mnv4_conv_small", 3.8e6, 0.2e9), ("mnv4_conv_medium", 9.7e6, 0.84e9)])
def test_mnv4_presets_match_published_size(name, params, macs):
    space = nas.get_space("uib", skeleton=name)  # 224 px, 1000 classes
    arch = space.preset(name)
    ops = space.ops(arch)
    n_params = sum(op.num_params() for op in ops)
    n_macs = sum(op.macs() for op in ops)
    assert n_params == sum(p.numel() for p in space.build(arch).parameters())
    assert n_params == pytest.approx(params, rel=0.01)
    assert n_macs == pytest.approx(macs, rel=0.08)
    assert space.presets() == [name]


def test_mnv4_conv_small_exact_counts():
    space = nas.get_space("uib", skeleton="mnv4_conv_small")
    ops = space.ops(space.preset("mnv4_conv_small"))
    # the published network, counted layer by layer (3.77M parameters, 0.186G MACs)
    assert sum(op.num_params() for op in ops) == 3_774_024
    assert sum(op.macs() for op in ops) == 186_005_568


def test_block_specs_parse_and_make_divisible():
    assert parse_blocks("conv(3, 2, 32), 2 x uib(0, 3, 1, 4, 128), fused(3,2,4,48)") == [
        ("conv", 3, 2, 32), ("uib", 0, 3, 1, 4, 128), ("uib", 0, 3, 1, 4, 128), ("fused", 3, 2, 4, 48)]
    with pytest.raises(NASError, match="uib takes 5 numbers"):
        parse_blocks("uib(3, 3, 1, 4)")
    with pytest.raises(NASError, match="is not a block spec"):
        parse_blocks("mbconv(3, 1)")
    assert [make_divisible(v) for v in (3, 20, 36, 100.0, 1000)] == [8, 24, 40, 104, 1000]


@pytest.mark.parametrize("start, mid, fused, kinds", [
    (3, 5, False, ["dw3", "pw", "dw5", "pw"]),  # ExtraDW
    (0, 3, False, ["pw", "dw3", "pw"]),  # IB
    (5, 0, False, ["dw5", "pw", "pw"]),  # ConvNeXt-like
    (0, 0, False, ["pw", "pw"]),  # FFN
    (0, 5, True, ["full5", "pw"]),  # Fused-IB
])
def test_each_uib_instantiation_builds_and_runs(start, mid, fused, kinds):
    space = small_space()
    base = space.default_arch()
    arch = space.validate(base.replace(s1_depth=2, s1_b2_start_dw=start, s1_b2_mid_dw=mid, s1_b2_fused=fused,
                                       s1_b2_expansion=3))
    model = space.build(arch)
    block = model[2]  # stem, stage1.block1, stage1.block2
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    got = [("dw" if c.groups > 1 else ("pw" if c.kernel_size[0] == 1 else "full")) + (
        str(c.kernel_size[0]) if c.kernel_size[0] > 1 else "") for c in convs]
    assert got == kinds
    assert block.residual  # stride 1, same width
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)


def test_canonical_forms():
    space = small_space()
    arch = space.default_arch()
    # an FFN in a strided first slot has no depthwise to carry the stride: it is the IB 3x3
    ffn = space.validate(arch.replace(s2_b1_start_dw=0, s2_b1_mid_dw=0))
    assert ffn["s2_b1_mid_dw"] == 3
    # a Fused-IB ignores the start depthwise
    fused = space.validate(arch.replace(s1_b1_fused=True, s1_b1_start_dw=5, s1_b1_mid_dw=0))
    assert (fused["s1_b1_start_dw"], fused["s1_b1_mid_dw"]) == (0, 3)
    # blocks beyond the depth hold the default block
    deep = space.validate(arch.replace(s2_depth=1, s2_b3_start_dw=7, s2_b3_expansion=6))
    assert (deep["s2_b3_start_dw"], deep["s2_b3_expansion"]) == (0, 4)


def test_all_ops_cover_every_arch():
    space = nas.get_space("uib", resolution=28, in_channels=1, num_classes=10)
    keys = {op.key for op in space.all_ops()}
    rng = np.random.default_rng(3)
    for _ in range(200):
        assert {op.key for op in space.ops(space.sample(rng))} <= keys


def randomise_batchnorm(module):
    gen = torch.Generator().manual_seed(0)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=gen) - 0.5)


@pytest.mark.parametrize("skeleton, resolution", [("small", 32), ("mnv4_conv_small", 64)])
def test_supernet_path_equals_standalone_model_with_its_weights(skeleton, resolution):
    space = nas.get_space("uib", resolution=resolution, in_channels=3, num_classes=10, skeleton=skeleton)
    torch.manual_seed(0)
    supernet = space.supernet()
    randomise_batchnorm(supernet)
    supernet.eval()
    x = torch.randn(2, 3, resolution, resolution)
    rng = np.random.default_rng(0)
    archs = [space.sample(rng) for _ in range(4)] + [space.preset(p) for p in space.presets()]
    for arch in archs:
        with torch.no_grad():
            shared = supernet(x, arch)
            alone = supernet.export(arch).eval()(x)
        assert torch.allclose(shared, alone, atol=1e-5), arch
    # smaller kernels are the centres of the largest one, narrower layers its first channels
    slot = supernet.slots["s1_b1"]["mid_dw"]
    layers, _ = block_layers(("uib", 0, 3, 1, 4, 16), 16, 16, "x")
    conv = layers[1].build()
    slot.export(conv[0], conv[1])
    assert torch.equal(conv[0].weight, slot.weight[:64, :, 2:5, 2:5])


def test_supernet_training_step_equals_training_the_path_alone():
    space = small_space()
    torch.manual_seed(0)
    supernet = space.supernet().train()
    arch = space.sample(np.random.default_rng(5))
    alone = supernet.export(arch).train()
    shared_opt = supernet.optimizer(lr=0.1, momentum=0.9, weight_decay=1e-3)
    alone_opt = torch.optim.SGD(alone.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    untouched = supernet.slots["s1_b1"]["fused"].weight.detach().clone()
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):  # the second step exercises the momentum buffers
        x, y = torch.randn(8, 3, 32, 32, generator=gen), torch.randint(10, (8,), generator=gen)
        for opt, forward in ((shared_opt, lambda: supernet(x, arch)), (alone_opt, lambda: alone(x))):
            opt.zero_grad()
            nn.functional.cross_entropy(forward(), y).backward()
            opt.step()
    after = supernet.export(arch).state_dict()
    for name, value in alone.state_dict().items():
        if not name.endswith("num_batches_tracked"):  # unused with a BatchNorm momentum
            assert torch.allclose(after[name], value, atol=1e-5), name
    if not arch["s1_b1_fused"]:  # weights the path did not use are left alone
        assert torch.equal(supernet.slots["s1_b1"]["fused"].weight, untouched)


def test_controller_reinforce_moves_toward_the_rewarded_choice():
    decision = nas.Decision("k", (3, 5, 7))
    controller = Controller([decision], lr=0.1)
    gen = torch.Generator().manual_seed(0)
    baseline = 0.0
    for _ in range(150):
        idx = controller.sample(gen)
        reward = 1.0 if idx["k"] == 2 else 0.0
        controller.reinforce([(idx, reward - baseline)])
        baseline = 0.95 * baseline + 0.05 * reward
    assert controller.probs()["k"][2] > 0.9 and controller.argmax() == {"k": 2}


def tiny_problem(seed=0, cost_model="macs", budget=None):
    space = nas.get_space("uib", resolution=16, in_channels=1, num_classes=4)
    data = nas.get_dataset("synthetic", n=256, num_classes=4, resolution=16, in_channels=1)
    evaluator = nas.get_evaluator("train", epochs=1, batch_size=64)
    evaluator.bind(space, data)
    return nas.SearchProblem(space, nas.get_cost_model(cost_model), evaluator, budget=budget, seed=seed,
                             show_progress=False)


def test_over_the_budget_the_controller_s_most_probable_change_is_made():
    space = nas.get_space("uib", resolution=16, in_channels=1, num_classes=4)
    problem = nas.SearchProblem(space, nas.get_cost_model("macs"), nas.get_evaluator("table"), show_progress=False)
    start = space.canonicalize(space.default_arch().replace(s4_width=max(space.decision("s4_width").options),
                                                            s4_depth=max(space.decision("s4_depth").options)))
    searched = ["s4_width", "s4_depth", "s3_width"]
    options = {n: space.decision(n).options for n in searched}
    probs = {n: list(np.linspace(1, 2, len(space.decision(n).options)) / np.linspace(1, 2, len(
        space.decision(n).options)).sum()) for n in searched}
    probs["s4_depth"] = [0.01] * (len(space.decision("s4_depth").options) - 1) + [0.99]  # depth held dearly

    def log_p(arch):
        return sum(np.log(probs[n][space.decision(n).options.index(arch[n])]) for n in searched)

    # every combination of the searched decisions: the most probable one within the budget
    combos = [space.canonicalize(start.replace(**dict(zip(searched, values)))) for values in itertools.product(
        *(space.decision(n).options for n in searched))]
    cost = problem.cost(start)
    for share in (0.97, 0.85):
        problem.budget = share * cost
        repaired = most_probable_within(problem, start, probs, options)
        assert problem.cost(repaired) <= problem.budget
        assert {n for n in start if start[n] != repaired[n]} <= set(searched)
        assert repaired["s4_depth"] == start["s4_depth"]  # the width gave way, not the depth
        # no change of one decision is more probable and within the budget
        for n in searched:
            for value in space.decision(n).options:
                other = space.canonicalize(repaired.replace(**{n: value}))
                assert problem.cost(other) > problem.budget or log_p(other) <= log_p(repaired) + 1e-12
        if share == 0.97:  # one cut and one rise reach the most probable of all 27 within the budget
            best = max((a for a in combos if problem.cost(a) <= problem.budget), key=log_p)
            assert log_p(repaired) == pytest.approx(log_p(best)) and repaired["s3_width"] != start["s3_width"]
    problem.budget = problem.cost(space.canonicalize(start.replace(s4_width=min(space.decision("s4_width").options),
                                                                   s3_width=min(space.decision("s3_width").options),
                                                                   s4_depth=min(space.decision("s4_depth").options)))) / 2
    assert most_probable_within(problem, start, probs, options) == start  # out of reach: unchanged (the run rejects it)


def test_tunas_under_a_budget_returns_a_network_within_it():
    common = {"steps": 4, "batch_size": 16, "reward_batch_size": 16, "warmup": 0.5}
    free = nas.run_search(nas.get_searcher("tunas", **common), tiny_problem())
    aim, argmax_cost = free.extras["aim_cost"], free.best.cost
    budget = 0.9 * argmax_cost
    tight = nas.run_search(nas.get_searcher("tunas", aim_cost=aim, **common), tiny_problem(budget=budget))
    # stage 1 is the same search (the aim is the same); a stage whose argmax misses the
    # budget hands the next stage (or the retraining) its choices changed to fit
    free_stages, tight_stages = free.extras["stages"], tight.extras["stages"]
    assert tight_stages[0]["final_probs"] == free_stages[0]["final_probs"]
    repairs = [(stage, stage["budget_repair"]) for stage in tight_stages if "budget_repair" in stage]
    assert repairs and "budget_repair" not in tight.extras  # each stage's own choices sufficed
    for stage, repair in repairs:
        assert repair["argmax_cost"] == pytest.approx(stage["argmax_cost"]) and repair["argmax_cost"] > budget
        assert repair["changed"] and set(repair["changed"]) <= set(stage["searched"])
        assert repair["cost"] <= budget
    if "budget_repair" in tight_stages[0]:  # stage 2 searched on the repaired shape
        shape = {k: v for k, v in tight.best.arch.items() if k.endswith(("_width", "_depth"))}
        assert all(tight_stages[0]["argmax_arch"][k] == v or k in tight_stages[0]["budget_repair"]["changed"]
                   for k, v in shape.items())
    assert tight.best is not None and tight.best.cost <= budget
    assert tight.n_evals == 1 and len(tight.extras["report"]) == len(repairs)
    assert all("decisions changed" in line for line in tight.extras["report"])


def test_tunas_two_stages_end_to_end_and_seeded():
    searcher = nas.get_searcher("tunas", steps=8, batch_size=16, reward_batch_size=32, warmup=0.5)
    problem = tiny_problem()
    result = nas.run_search(searcher, problem)
    stage1, stage2 = result.extras["stages"]
    # The controller's probabilities as the dashboard plots them: per stage, decision and
    # option a trial of the "<run>:progress" study, its intermediate values the trajectory.
    progress = {t.user_attrs["quantity"]: t for t in optuna.load_study(
        study_name="search:progress", storage=problem.ledger.storage).get_trials()}
    for stage in (stage1, stage2):
        for name, probs in stage["final_probs"].items():
            options = [o for o in problem.space.decision(name).options if stage is stage1 or o in (0, 3, 5)]
            for option, p in zip(options, probs, strict=True):
                trial = progress[f"{stage['stage']}: P {name}={option}"]
                assert trial.state.name == "COMPLETE" and trial.value == pytest.approx(p)
                assert trial.intermediate_values == pytest.approx(
                    {s["step"]: s["probs"][name][options.index(option)] for s in stage["trajectory"]})
    assert f"{stage1['stage']}: reward baseline" in progress
    space = nas.get_space("uib", resolution=16, in_channels=1, num_classes=4)
    assert set(stage1["searched"]) == {d.name for d in space.decisions("coarse")}
    # stage 2 as MobileNetV4's: each block's two depthwise layers, absent, 3x3 or 5x5
    assert set(stage2["searched"]) == {d.name for d in space.decisions("fine") if d.name.endswith("_dw")}
    assert all(len(p) == 3 for p in stage2["final_probs"].values())
    # stage 1 searched the shape with every block held at IB, expansion 4, 3x3
    shape = {k: v for k, v in stage1["argmax_arch"].items() if k.endswith(("_width", "_depth"))}
    blocks = {k: v for k, v in stage1["argmax_arch"].items() if k not in shape}
    assert blocks == {k: v for k, v in space.default_arch().items() if k in blocks}
    final = result.best.arch
    assert {k: final[k] for k in shape} == shape  # stage 2 kept the stage-1 shape
    assert all(final[k] == 4 for k in final if k.endswith("_expansion")) and not any(
        final[k] for k in final if k.endswith("_fused"))
    assert all(final[k] in (0, 3, 5) for k in final if k.endswith("_dw"))
    assert result.n_evals == 1 and result.extras["aim_from"] == "median of 200 random archs"
    assert result.extras["cost_error"] == pytest.approx(result.best.cost / result.extras["aim_cost"] - 1)
    again = nas.run_search(nas.get_searcher("tunas", steps=8, batch_size=16, reward_batch_size=32, warmup=0.5),
                           tiny_problem())
    assert again.best.arch == final and again.extras["stages"][1]["final_probs"] == stage2["final_probs"]


def test_tunas_warmup_keeps_the_controller_still_and_one_stage_searches_all():
    searcher = nas.get_searcher("tunas", stages=1, steps=4, batch_size=16, reward_batch_size=16, warmup=0.75)
    result = nas.run_search(searcher, tiny_problem())
    (stage,) = result.extras["stages"]
    space = nas.get_space("uib", resolution=16, in_channels=1, num_classes=4)
    assert len(stage["searched"]) == len(space.decisions())
    snapshots = {s["step"]: s["probs"] for s in stage["trajectory"]}
    for step in (0, 1, 2):  # the first 75% of 4 steps: controller learning rate zero
        for probs in snapshots[step].values():
            assert probs == pytest.approx([1 / len(probs)] * len(probs))
    assert snapshots[3] != snapshots[2]


def test_tunas_errors():
    with pytest.raises(NASError, match="stages must be 1"):
        nas.get_searcher("tunas", stages=3)
    with pytest.raises(NASError, match="beta must be <= 0"):
        nas.get_searcher("tunas", beta=0.5)
    with pytest.raises(NASError, match="needs a space with 'supernet'"):
        nas.run_search(nas.get_searcher("tunas"), nas.SearchProblem(
            nas.get_space("nb201"), nas.get_cost_model("macs"), nas.get_evaluator("table"), show_progress=False))
    space = nas.get_space("uib", resolution=16, in_channels=1, num_classes=4)
    problem = nas.SearchProblem(space, nas.get_cost_model("macs"), nas.get_evaluator("table"), show_progress=False)
    with pytest.raises(NASError, match="needs a data set"):
        nas.run_search(nas.get_searcher("tunas", steps=2), problem)
    with pytest.raises(NASError, match="uib skeleton 'large' is not one of"):
        nas.get_space("uib", skeleton="large")
    with pytest.raises(NASError, match="must include 3 and 0"):
        nas.get_space("uib", kernels=[5, 7])


def test_inherited_accuracy_ranks_paths_without_touching_the_supernet():
    # A toy supernet on synthetic data: each path's inherited accuracy is its exported
    # model's, with BatchNorm statistics re-estimated on that path alone; the supernet's
    # own weights and statistics stay as they were.
    from nas.training.supernet import inherited_accuracy, ranking_agreement
    from nas.training.train import accuracy, recalibrate_batchnorm

    data = nas.get_dataset("synthetic", n=96, num_classes=4, in_channels=3, resolution=16)
    space = nas.get_space("uib", resolution=16, in_channels=3, num_classes=4)
    evaluator = nas.get_evaluator("train")
    evaluator.bind(space, data)
    data = evaluator.data
    torch.manual_seed(0)
    supernet = space.supernet()
    randomise_batchnorm(supernet)
    before = {k: v.clone() for k, v in supernet.state_dict().items()}
    archs = [space.sample(np.random.default_rng(s)) for s in range(4)]
    inherited = [inherited_accuracy(supernet, a, data, space.input_shape, 32, "cpu") for a in archs]
    assert all(torch.equal(v, supernet.state_dict()[k]) for k, v in before.items())
    for arch, got in zip(archs, inherited):
        model = supernet.export(arch).to(memory_format=torch.channels_last)
        recalibrate_batchnorm(model, data, space.input_shape, 32, "cpu")
        with torch.no_grad():
            assert got == accuracy(model, data, data.val, space.input_shape, 32, "cpu")[0]
    # the metric: the same order is 1, the reverse -1, whatever the scale
    scores = [0.1, 0.5, 0.3, 0.9]
    assert ranking_agreement(scores, [10 * s for s in scores]) == {"kendall_tau": 1.0, "spearman": 1.0, "paths": 4}
    assert ranking_agreement(scores, [-s for s in scores])["kendall_tau"] == -1.0
    assert ranking_agreement([0.1, 0.2, 0.3], [0.3, 0.1, 0.2])["kendall_tau"] == pytest.approx(-1 / 3)
    with pytest.raises(ValueError, match="two equally long lists"):
        ranking_agreement([0.1], [0.2])


def test_tunas_stage2_fine_searches_every_fine_decision_and_option():
    searcher = nas.get_searcher("tunas", steps=2, batch_size=16, reward_batch_size=16, warmup=0.5, stage2="fine")
    result = nas.run_search(searcher, tiny_problem())
    space = nas.get_space("uib", resolution=16, in_channels=1, num_classes=4)
    stage2 = result.extras["stages"][1]
    assert stage2["stage"] == "stage2-fine"
    assert set(stage2["searched"]) == {d.name for d in space.decisions("fine")}
    assert all(len(stage2["final_probs"][d.name]) == len(d.options) for d in space.decisions("fine"))
    with pytest.raises(NASError, match="stage2 must be one of 'mnv4', 'fine'"):
        nas.get_searcher("tunas", stage2="all")
