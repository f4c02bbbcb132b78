"""RAN-e's AFRB space, the collapse of linear blocks, and the differentiable searcher."""

import json

import numpy as np
import optuna
import pytest
import torch
from torch import nn

import nas
from nas import NASError
from spaces.afrb import AFRB, Residual, collapse, collapse_afrb

# Table 1 of the RAN-e paper: (params, MACs) at 224 px, 1000 classes.
TABLE_1 = {
    "supernet_all_ibn": (4.7e6, 590e6),
    "subnetwork_a": (4.6e6, 561e6),
    "subnetwork_b": (4.6e6, 482e6),
    "subnetwork_c": (4.7e6, 488e6),
    "ground_truth": (4.5e6, 433e6),
}


def small_space(**kw):
    return nas.get_space("afrb", resolution=16, in_channels=1, num_classes=4, width_mult=0.25, **kw)


@pytest.mark.parametrize("preset", sorted(TABLE_1))
def test_presets_match_table_1(preset):
    space = nas.get_space("afrb", width_mult=1.0)  # the published SuperNet
    arch = space.preset(preset)
    ops = space.ops(arch)
    params, macs = TABLE_1[preset]
    assert sum(op.macs() for op in ops) == pytest.approx(macs, rel=0.01)
    assert sum(op.num_params() for op in ops) == pytest.approx(params, rel=0.03)


def test_presets_are_fig_4_and_the_supernet_layout():
    space = nas.get_space("afrb", width_mult=1.0)  # the published SuperNet
    assert len(space.units) == 17 and [r.kind for r in space.rows].count("A3") == 1
    summary = {p: space.summary(space.preset(p))["collapsed"] for p in space.presets()}
    # Fig. 4: A collapses 5 of 17 units, B two more, C changes kernels only, GT is manual
    assert summary == {"supernet_all_ibn": 0, "subnetwork_a": 5, "subnetwork_b": 7, "subnetwork_c": 7,
                       "ground_truth": 7}
    c = space.preset("subnetwork_c")
    assert [c[f"u{u}_kernel"] for u in (5, 7, 13, 16, 17)] == [5, 5, 7, 5, 5]
    # the AFRB-3 row: 128 -> 64 -> 128 with e = 6 on the row's input width in both halves
    a3 = next(r for r in space.rows if r.kind == "A3")
    assert [(u.c_in, u.c_out, u.mid) for u in a3.units] == [(128, 64, 768), (64, 128, 768)]
    # the built model has exactly the parameters its OpSpecs count
    model = space.build(space.preset("ground_truth"))
    assert sum(p.numel() for p in model.parameters()) == sum(op.num_params() for op in space.ops(space.preset("ground_truth")))


def randomise_batchnorm(module, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.randn(n, generator=gen) * 0.3 + 1)
            m.bias.data.copy_(torch.randn(n, generator=gen) * 0.5)


@pytest.mark.parametrize("k, stride", [(3, 1), (5, 2), (7, 1)])
def test_collapse_afrb_1_is_exact(k, stride):
    torch.manual_seed(0)
    block = AFRB(8, 12, 48, k, stride, alpha_init=1.0)
    randomise_batchnorm(block)
    block.eval()
    collapsed = collapse_afrb(block)
    assert [type(m) for m in collapsed] == [nn.BatchNorm2d, nn.ReLU, nn.Conv2d]
    conv = collapsed[2]
    assert conv.kernel_size == (k, k) and conv.stride == (stride, stride) and conv.bias is not None
    x = torch.randn(3, 8, 11, 11)
    with torch.no_grad():
        assert torch.allclose(block(x), collapsed(x), atol=1e-4)


def test_collapse_afrb_2_and_afrb_3_residual_forms_are_exact():
    torch.manual_seed(1)
    afrb2 = Residual(AFRB(16, 16, 64, 3, 1, alpha_init=1.0))
    afrb3 = Residual(nn.Sequential(AFRB(16, 8, 96, 3, 1, alpha_init=1.0), AFRB(8, 16, 96, 3, 1, alpha_init=1.0)))
    for block in (afrb2, afrb3):
        randomise_batchnorm(block, seed=3)
        block.eval()
        collapsed = collapse(block)
        x = torch.randn(2, 16, 9, 9)
        with torch.no_grad():
            assert torch.allclose(block(x), collapsed(x), atol=1e-4)
    # AFRB-3 collapsed: a residual-like block of two regular 3x3 convs, n -> n/2 -> n
    convs = [m for m in collapse(afrb3).modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(16, 8, (3, 3)), (8, 16, (3, 3))]


def test_collapse_needs_alpha_one_and_the_whole_supernet_collapses():
    with pytest.raises(NASError, match="only when alpha = 1"):
        collapse_afrb(AFRB(4, 4, 8, 3, 1, alpha_init=0.5))
    space = small_space()
    torch.manual_seed(0)
    supernet = space.relaxed(alpha_init=1.0)
    randomise_batchnorm(supernet)
    supernet.eval()
    collapsed = supernet.collapsed()
    assert not any(isinstance(m, AFRB) for m in collapsed.modules())
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(supernet(x), collapsed(x), atol=1e-4)
    # the collapsed network has the structure (and parameter count, less BNs) of the all-R arch
    all_r = space.default_arch().replace(**{f"u{u.index}_form": "R" for u in space.units})
    convs = lambda m: [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in m.modules()  # noqa: E731
                       if isinstance(c, nn.Conv2d)]
    assert convs(collapsed) == convs(space.build(all_r))


def test_an_exported_path_is_the_supernet_with_alphas_pinned_and_leaves_it_unchanged():
    # Weight-sharing ranking on the AFRB SuperNet: a path (a form per unit) keeps the
    # SuperNet's weights with every alpha at the end its form stands for, 0 (I) or 1 (R).
    from nas.training.supernet import inherited_accuracy

    space = small_space()
    torch.manual_seed(0)
    supernet = space.relaxed(alpha_init=0.4)
    randomise_batchnorm(supernet)
    supernet.eval()
    before = {k: v.clone() for k, v in supernet.state_dict().items()}
    forms = {f"u{u.index}_form": "R" if u.index % 3 == 0 else "I" for u in space.units}
    arch = space.default_arch().replace(**forms)
    path = supernet.export(arch).eval()
    assert all(torch.equal(v, supernet.state_dict()[k]) for k, v in before.items())
    path_alphas = [m.alpha for m in path.modules() if isinstance(m, AFRB)]
    assert len(path_alphas) == len(space.units) and not any(a.requires_grad for a in path_alphas)
    alphas = sorted(float(a) for a in path_alphas)
    n_r = sum(f == "R" for f in forms.values())
    assert alphas == [0.0] * (len(forms) - n_r) + [1.0] * n_r and 0 < n_r < len(forms)
    reference = space.relaxed(alpha_init=0.4)
    reference.load_state_dict(supernet.state_dict())
    with torch.no_grad():
        for name, afrb in reference.afrbs.items():
            afrb.alpha.fill_(1.0 if forms[f"{name}_form"] == "R" else 0.0)
    reference.eval()
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(path(x), reference(x), atol=1e-5)
        # its R units are exactly their collapsed convolutions
        collapsed = collapse(path.rows, strict=False)
        assert sum(isinstance(m, AFRB) for m in collapsed.modules()) == len(forms) - n_r
        assert torch.allclose(path.top(collapsed(path.stem(x))), path(x), atol=1e-4)
    with pytest.raises(NASError, match="base's kernels only; the path differs at u2_kernel"):
        supernet.export(arch.replace(u2_kernel=5))
    # the generic ranking helper runs on it and leaves the SuperNet as it was
    data = nas.get_dataset("synthetic", n=64, num_classes=4, in_channels=1, resolution=16)
    evaluator = nas.get_evaluator("train")
    evaluator.bind(space, data)
    accuracy = inherited_accuracy(supernet, arch, evaluator.data, space.input_shape, 32, "cpu", 2)
    assert 0 <= accuracy <= 1
    assert all(torch.equal(v, supernet.state_dict()[k]) for k, v in before.items())


def test_prelu_pair_shares_one_alpha():
    block = AFRB(4, 4, 8, 3, 1, alpha_init=0.3)
    scalars = [p for p in block.parameters() if p.ndim == 0]
    assert scalars == [block.alpha]
    x = torch.randn(2, 4, 6, 6)
    block(x).sum().backward()
    assert block.alpha.grad is not None and block.alpha.grad != 0


def test_relaxation_expected_cost_is_exact_at_the_ends():
    space = small_space()
    relaxation = space.relaxed()
    cost_model = nas.get_cost_model("macs")
    relaxation.bind_cost(cost_model)
    all_i = space.default_arch()
    all_r = all_i.replace(**{f"u{u.index}_form": "R" for u in space.units})
    with torch.no_grad():
        for p in relaxation.arch_parameters().values():
            p.fill_(-5.0)  # far from 1: IBN with probability ~1
        assert float(relaxation.expected_cost()) == pytest.approx(cost_model.cost(space.ops(all_i)), rel=1e-5)
        for p in relaxation.arch_parameters().values():
            p.fill_(1.0)
        assert float(relaxation.expected_cost()) == pytest.approx(cost_model.cost(space.ops(all_r)), rel=1e-5)
        assert relaxation.derive() == all_r
        alphas = list(relaxation.arch_parameters().values())
        alphas[0].fill_(0.79)
        alphas[1].fill_(1.3)
    derived = relaxation.derive(band=(0.8, 1.3))
    assert derived["u1_form"] == "I" and derived["u2_form"] == "R"
    assert relaxation.derive(band=(0.9, 1.1))["u2_form"] == "I"


def toy_alpha(target: str, steps: int = 400) -> float:
    """Train one AFRB-2 with problem (3)'s penalty on a regression toy task; its alpha."""
    torch.manual_seed(0)
    block = Residual(AFRB(4, 4, 16, 3, 1, alpha_init=0.0))
    alpha = block.body.alpha
    weights = [p for p in block.parameters() if p is not alpha]
    opt = torch.optim.Adam(weights, lr=0.01)
    alpha_opt = torch.optim.Adam([alpha], lr=0.02)
    gen = torch.Generator().manual_seed(0)
    mix = torch.randn(4, 4, 3, 3, generator=gen) * 0.3
    for _ in range(steps):
        x = torch.randn(32, 4, 8, 8, generator=gen)
        y = nn.functional.conv2d(x, mix, padding=1)
        if target == "abs":  # needs a non-linearity after mixing channels and pixels
            y = y.abs()
        loss = nn.functional.mse_loss(block(x), y) + 0.01 * (alpha - 1) ** 2
        opt.zero_grad()
        alpha_opt.zero_grad()
        loss.backward()
        opt.step()
        alpha_opt.step()
    return float(alpha.detach())


def test_alpha_penalty_collapses_a_block_whose_non_linearity_is_not_needed():
    linear = toy_alpha("linear")
    assert 0.8 <= linear <= 1.3  # collapses by the paper's rule
    assert not 0.8 <= toy_alpha("abs") <= 1.3  # the same penalty leaves a needed non-linearity


def tiny_problem(space, cost_model="macs", seed=0):
    data = nas.get_dataset("synthetic", n=128, num_classes=4, resolution=16, in_channels=1)
    evaluator = nas.get_evaluator("train", epochs=1, batch_size=32)
    evaluator.bind(space, data)
    return nas.SearchProblem(space, nas.get_cost_model(cost_model), evaluator, seed=seed, show_progress=False)


def test_differentiable_search_on_afrb_end_to_end_and_seeded():
    space = small_space()
    options = dict(steps=6, batch_size=16, snapshots=3, penalty_weight=1.0, cost_weight=0.5, evaluate_base=True,
                   alpha_init=1.0, arch_lr=0.01)  # alphas cannot leave the band in 6 steps: every unit collapses
    searcher = nas.get_searcher("differentiable", **options)
    problem = tiny_problem(space)
    result = nas.run_search(searcher, problem)
    extras = result.extras
    # alphas and losses over the steps, as the dashboard plots them ("<run>:progress")
    progress = {t.user_attrs["quantity"]: t for t in optuna.load_study(
        study_name="search:progress", storage=problem.ledger.storage).get_trials()}
    assert set(progress) == {f"alpha u{i}_alpha" for i in range(1, 18)} | {"loss", "penalty", "expected_cost"}
    assert progress["alpha u3_alpha"].intermediate_values == pytest.approx(
        {t["step"]: t["alpha"]["u3_alpha"] for t in extras["trajectory"]})
    assert progress["loss"].value == pytest.approx(extras["trajectory"][-1]["loss"])
    assert result.n_evals == 2  # the base (all IBN) and the derived arch, both trained from scratch
    assert extras["before"]["collapsed"] == 0 and extras["before"]["arch"] == dict(space.default_arch())
    assert extras["after"]["collapsed"] == 17 == sum(1 for a in extras["final"].values() if 0.8 <= a <= 1.3)
    assert [t["step"] for t in extras["trajectory"]] == [0, 2, 4, 5]
    assert set(extras["trajectory"][0]["alpha"]) == {f"u{i}_alpha" for i in range(1, 18)}
    assert any(line.startswith("collapsed:") for line in extras["report"])
    assert extras["after"]["macs"] == sum(op.macs() for op in space.ops(space.validate(extras["after"]["arch"])))
    again = nas.run_search(nas.get_searcher("differentiable", **options), tiny_problem(small_space()))
    assert again.extras["final"] == extras["final"] and again.best.arch == result.best.arch


def test_cost_term_pulls_expensive_units_towards_collapse():
    def final_alphas(cost_weight):
        searcher = nas.get_searcher("differentiable", steps=15, batch_size=16, penalty_weight=0.0,
                                    cost_weight=cost_weight, alpha_init=0.8)
        return nas.run_search(searcher, tiny_problem(small_space())).extras["final"]

    plain, costed = final_alphas(0.0), final_alphas(5.0)
    # with the cost term, alphas move towards 1 (cheaper expected cost) more than without
    assert np.mean([abs(a - 1) for a in costed.values()]) < np.mean([abs(a - 1) for a in plain.values()])


def test_differentiable_search_under_a_budget_pays_above_it_and_fits_the_derived_arch():
    def search(cost_weight, budget_share):
        space = small_space()
        problem = tiny_problem(space)
        all_i = problem.cost(space.default_arch())
        if budget_share is not None:
            problem = problem.with_budget(budget_share * all_i)
        searcher = nas.get_searcher("differentiable", steps=8, batch_size=16, penalty_weight=0.0,
                                    cost_weight=cost_weight, alpha_init=0.5)
        return problem, nas.run_search(searcher, problem)

    # a budget over every arch's cost: the hinge is zero, the search is the cost-blind one
    _, blind = search(0.0, None)
    _, loose = search(5.0, 1.01)
    assert loose.extras["final"] == blind.extras["final"] and "budget_repair" not in loose.extras
    # a tight budget: alphas move towards collapse, and the derived arch is made to fit
    problem, tight = search(5.0, 0.65)
    assert np.mean(list(tight.extras["final"].values())) > np.mean(list(blind.extras["final"].values()))
    repair = tight.extras["budget_repair"]
    assert repair["argmax_cost"] > problem.budget >= repair["cost"] == tight.best.cost
    assert repair["changed"] and all(k.endswith("_form") and v == ["I", "R"] for k, v in repair["changed"].items())
    assert tight.best.feasible and tight.n_evals == 1
    assert tight.extras["report"][0].startswith("the derived arch costs ")


def test_differentiable_search_on_uib_mixed_ops():
    space = nas.get_space("uib", resolution=16, in_channels=1, num_classes=4)
    relaxation = space.relaxed(seed=0)
    cost_model = nas.get_cost_model("macs")
    relaxation.bind_cost(cost_model)
    # one logit per option of every fine decision of the base's blocks
    base = space.default_arch()
    n_blocks = sum(base[f"s{s}_depth"] for s in range(1, len(space.stages) + 1))
    assert len(relaxation.arch_parameters()) == 4 * n_blocks
    # the expected cost is the cost of the arch the logits put all their mass on
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for name, logits in relaxation.arch_parameters().items():
            logits.zero_()
            logits[int(rng.integers(len(logits)))] = 30.0
    derived = relaxation.derive()
    with torch.no_grad():
        assert float(relaxation.expected_cost()) == pytest.approx(cost_model.cost(space.ops(derived)), rel=1e-4)
    # ... and under uniform logits the mean over every combination of each block's options
    with torch.no_grad():
        for logits in relaxation.arch_parameters().values():
            logits.zero_()
    samples = [cost_model.cost(space.ops(space.canonicalize(base.replace(**{
        n: space.decision(n).options[int(rng.integers(len(space.decision(n).options)))]
        for n in relaxation.arch_parameters()})))) for _ in range(3000)]
    with torch.no_grad():
        assert float(relaxation.expected_cost()) == pytest.approx(np.mean(samples), rel=0.02)
    # a training pass gives the logits of the sampled path a gradient
    relaxation.train()
    loss = nn.functional.cross_entropy(relaxation(torch.randn(8, 1, 16, 16)), torch.randint(4, (8,)))
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in relaxation.arch_parameters().values())
    result = nas.run_search(nas.get_searcher("differentiable", steps=4, batch_size=16, cost_weight=1.0),
                            tiny_problem(space))
    assert result.n_evals == 1 and result.extras["relaxation"] == "probs"
    assert set(result.extras["final"]) == set(relaxation.arch_parameters())


def test_differentiable_errors():
    with pytest.raises(NASError, match="band must contain 1"):
        nas.get_searcher("differentiable", band=[0.5, 0.9])
    with pytest.raises(NASError, match="needs a space with 'relaxed'"):
        nas.run_search(nas.get_searcher("differentiable"), nas.SearchProblem(
            nas.get_space("nb201"), nas.get_cost_model("macs"), nas.get_evaluator("table"), show_progress=False))
    with pytest.raises(NASError, match="width_mult"):
        nas.get_space("afrb", width_mult=0)
    with pytest.raises(NASError, match="kernels"):
        nas.get_space("afrb", kernels=[4])


def test_cli_differentiable_search_reports_collapse_and_one_preset_evaluates(tmp_path, cli_env):
    from conftest import run_cli

    small = ["space=afrb", "space.width_mult=0.25", "data=synthetic", "data.n=128", "evaluator.epochs=1",
             "evaluator.batch_size=32", "target=macs", "progress=false"]
    out = run_cli(small + ["searcher=differentiable", "searcher.steps=4", "searcher.batch_size=16", "run_name=d"],
                  tmp_path, cli_env)
    assert out.returncode == 0, out.stderr
    assert "collapsed: " in out.stdout and "MACs: " in out.stdout and "macs: " in out.stdout
    result = json.loads((tmp_path / "runs" / "d" / "result.json").read_text())
    assert result["searcher"] == "differentiable" and len(result["trajectory"]) == 4
    assert result["before"]["collapsed"] == 0 and result["after"]["units"] == 17
    assert (tmp_path / "runs" / "d" / "trajectory.png").stat().st_size > 0
    # arch=... evaluates a preset without the searcher having to suit the space
    out = run_cli(small + ["arch=ground_truth", "run_name=gt"], tmp_path, cli_env)
    assert out.returncode == 0, out.stderr
    result = json.loads((tmp_path / "runs" / "gt" / "result.json").read_text())
    assert result["best"]["arch"] == dict(nas.get_space("afrb").preset("ground_truth"))
