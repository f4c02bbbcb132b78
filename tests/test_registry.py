import json

import pytest
from torch import nn

import nas
from nas import Arch, Decision, NASError, OpSpec, Space
from nas.registry import Registry


def test_builtin_plugins_are_registered_by_entry_points():
    assert {"nb201", "mbconv"} <= set(nas.list_spaces())
    assert {"random", "optuna"} <= set(nas.list_searchers())
    assert {"macs", "params", "relu", "roofline"} <= set(nas.list_cost_models())
    assert {"train", "table"} <= set(nas.list_evaluators())
    assert {"mnist5k", "digits", "synthetic", "cifar10", "cifar100"} <= set(nas.list_datasets())
    assert nas.list_spaces("nb*") == ["nb201"]


def test_unknown_name_lists_registered():
    with pytest.raises(NASError, match=r"unknown space 'nope'; registered spaces: .*'mbconv'.*'nb201'"):
        nas.get_space("nope")
    with pytest.raises(NASError, match="registered searchers"):
        nas.get_searcher("nope")
    with pytest.raises(NASError, match="registered cost models"):
        nas.get_cost_model("nope")


def test_unknown_and_mistyped_fields_are_named():
    with pytest.raises(NASError, match="has no field 'widht'; its fields are: resolution"):
        nas.get_space("mbconv", widht=3)
    with pytest.raises(NASError, match="field 'n_evals' must be an integer"):
        nas.get_searcher("random", n_evals="ten")


def test_decorator_registration_and_duplicate_names():
    reg = Registry("widget", "nas.test_widgets")

    @reg.register("w1")
    class W1:
        def __init__(self, size: int = 1):
            self.size = size

    assert reg.names() == ["w1"] and reg.create("w1", size=3).size == 3
    with pytest.raises(NASError, match="already registered"):
        @reg.register("w1")
        class Other:
            pass


def test_custom_space_plugs_into_search():
    @nas.register_space("test_tiny_linear")
    class Tiny(Space):
        def __init__(self, resolution: int = 4, num_classes: int = 2, in_channels: int = 1):
            super().__init__(resolution, num_classes, in_channels)

        def _make_decisions(self):
            return [Decision("width", (2, 4, 8))]

        def ops(self, arch):
            w = arch["width"]
            return [OpSpec.make("conv", "conv", c_in=1, c_out=w, res=4, k=3, act="relu"),
                    OpSpec.make("gap", "gap", c_in=w, res=4),
                    OpSpec.make("linear", "fc", c_in=w, c_out=2)]

        def build(self, arch):
            return nn.Sequential(*(op.build() for op in self.ops(arch)))

    space = nas.get_space("test_tiny_linear")
    assert "test_tiny_linear" in nas.list_spaces()
    data = nas.get_dataset("synthetic", n=64, num_classes=2, in_channels=1, resolution=4)
    evaluator = nas.get_evaluator("train", epochs=1, batch_size=16, device="cpu")
    result = nas.search(space, nas.get_searcher("random", n_evals=3), "params", evaluator, data=data)
    assert result.n_evals == 3
    assert {e.arch["width"] for e in result.history} == {2, 4, 8}
    assert result.best is not None and 0.0 <= result.best.quality <= 1.0
    with pytest.raises(NASError, match="needs a space with 'table'"):
        nas.get_evaluator("table").bind(space)
    assert space.validate({"width": 4}) == Arch(width=4)


def _cli_node(group, option):
    from omegaconf import OmegaConf

    from nas.app.run import compose_checked

    cfg = compose_checked([f"{group}={option}"] + (["evaluator=table", "space=nb201"] if group == "searcher" else []))
    node = OmegaConf.to_container(cfg, resolve=True)[group]
    node.pop("name")
    return node


@pytest.mark.parametrize("group", ["space", "searcher", "evaluator", "data"])
def test_the_cli_and_the_library_give_the_same_defaults(group):
    """One source of defaults: every plug-in made from its CLI config node equals the one
    ``nas.get_*`` makes with no arguments (a space's data fields, null on the command line
    until the data set fills them, and an evaluator's seed, the run's, aside)."""
    from nas.app.run import register_config_nodes, register_resolvers
    from nas.registry import DATASETS, EVALUATORS, SEARCHERS, SPACES, config_fields

    register_resolvers()
    register_config_nodes()
    registry = {"space": SPACES, "searcher": SEARCHERS, "evaluator": EVALUATORS, "data": DATASETS}[group]
    for name in registry.names():
        node, defaults = _cli_node(group, name), config_fields(registry.get(name))
        following_data = getattr(registry.get(name), "data_fields", ()) if group == "space" else ()
        assert all(node[k] is None for k in following_data), name
        assert set(node) == set(defaults), name
        if group == "evaluator" and "seed" in node:
            assert node["seed"] == 0 == defaults["seed"]  # the default run's seed
        given = {k: (defaults[k] if k in following_data else v) for k, v in node.items()}
        if group == "space":
            assert nas.get_space(name, **given).config() == nas.get_space(name).config(), name
        elif group == "data":
            continue  # loading every data set is the data tests' job; the fields are compared above
        else:
            made, default = registry.create(name, **given), registry.create(name)
            assert vars(made).keys() == vars(default).keys(), name
            assert repr(vars(made)) == repr(vars(default)), name
        for k, v in node.items():  # the same values, up to YAML's lists for tuples
            expected = defaults[k]
            if k not in following_data and not (group == "evaluator" and k == "seed"):
                assert v == (list(expected) if isinstance(expected, tuple) else expected) or \
                    json.dumps(v, default=list) == json.dumps(expected, default=list), (name, k)
