"""A search space defined in user code, registered, and searched from Python and the CLI.

``tiny_cnn`` is a three-stage CNN whose stages each choose a width and a kernel size. A
space needs three things: its decisions (``_make_decisions``), the layers of an arch as
OpSpecs (``ops``: what every cost model and LUT prices) and the network (``build``);
presets (``_presets``) are optional. Register it with ``@nas.register_space`` and run
any compatible searcher on it:

    python examples/custom_space.py        # from Python: optuna under a MACs budget
    PYTHONPATH=examples python -m nas.run plugins=[custom_space] space=tiny_cnn data=digits \\
        searcher=optuna searcher.n_evals=6 target=macs evaluator.epochs=2

A searcher that needs more of a space (TuNAS a weight-sharing supernet, HANT a layer-wise
teacher, ...) says which methods are missing; the last lines of ``main`` show it.
"""

from __future__ import annotations

import nas
from nas import Decision, NASError, OpSpec, Space, register_space
from nas.ops import build_sequential


@register_space("tiny_cnn")
class TinyCNN(Space):
    """Stem, three conv stages (stride 2 after the first), global pooling, classifier."""

    def __init__(self, resolution: int = 8, num_classes: int = 10, in_channels: int = 1,
                 widths: tuple = (8, 16, 32), kernels: tuple = (1, 3, 5)):
        super().__init__(resolution, num_classes, in_channels)
        self.widths, self.kernels = tuple(widths), tuple(kernels)

    def _make_decisions(self):
        return [Decision(f"s{s}_{what}", options, tag=what) for s in (1, 2, 3)
                for what, options in (("width", self.widths), ("kernel", self.kernels))]

    def ops(self, arch):
        ops = [OpSpec.make("conv", "stem", c_in=self.in_channels, c_out=self.widths[0], res=self.resolution, k=3,
                           act="relu")]
        c, r = self.widths[0], self.resolution
        for s in (1, 2, 3):
            op = OpSpec.make("conv", f"stage{s}", c_in=c, c_out=arch[f"s{s}_width"], res=r, k=arch[f"s{s}_kernel"],
                             stride=1 if s == 1 else 2, act="relu")
            ops.append(op)
            c, r = op.out_shape()[0], op.out_shape()[1]
        return ops + [OpSpec.make("gap", "pool", c_in=c, res=r),
                      OpSpec.make("linear", "classifier", c_in=c, c_out=self.num_classes)]

    def build(self, arch):
        return build_sequential(self.ops(self.validate(arch)))

    def _presets(self):
        return {"narrow": {**{f"s{s}_width": self.widths[0] for s in (1, 2, 3)},
                           **{f"s{s}_kernel": 3 for s in (1, 2, 3)}},
                "wide": {**{f"s{s}_width": self.widths[-1] for s in (1, 2, 3)},
                         **{f"s{s}_kernel": 3 for s in (1, 2, 3)}}}


def main() -> None:
    data = nas.get_dataset("digits")  # scikit-learn's 8x8 digits: shipped with the package
    space = nas.get_space("tiny_cnn", resolution=data.resolution, in_channels=data.in_channels,
                          num_classes=data.num_classes)
    macs = nas.get_cost_model("macs")
    budget = macs.cost(space.ops(space.preset("wide"))) / 2
    print(f"space tiny_cnn: {space.size()} architectures; presets {space.presets()}; MACs budget {budget:,.0f}")
    result = nas.search(space, nas.get_searcher("optuna", n_evals=6, n_startup_trials=3), cost_model=macs,
                        evaluator=nas.get_evaluator("train", epochs=2, device="cpu"), data=data, budget=budget,
                        seed=0)
    print(f"{result.n_evals} evaluated; Pareto front (accuracy vs MACs):")
    for e in result.pareto:
        print(f"  accuracy {e.quality:.4f}  MACs {e.cost:>9,.0f}  {dict(e.arch)}")
    print(f"best within the budget: accuracy {result.best.quality:.4f}, {result.best.cost:,.0f} MACs")
    try:
        nas.search(space, "tunas", cost_model=macs, evaluator="train", data=data)
    except NASError as exc:
        print(f"searcher tunas on tiny_cnn: {exc}")


if __name__ == "__main__":
    main()
