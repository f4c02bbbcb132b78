"""DeepReDuce with ReLU-reuse (DeepReShape's Algorithm 2, App. E): ReLU-optimised versions
of one network, for private inference, where ReLUs are the cost.

From a base network (a preset of the space, e.g. ``resnet18_m16`` or ``hrn_5x7x2x``, or the
path of an arch JSON file) with its stages' criticality order:

1. the base is trained; it is the teacher of every network below;
2. if the least critical stage holds the largest share of the ReLUs, it is culled
   (every ReLU of its blocks removed): Net;
3. Net^T: the remaining stages thinned (each block's inner ReLU removed);
4. Net^C: Net^T with its channels scaled by ``channel_scale`` (DeepReDuce's reshaping);
5. Net^R4, Net^R8, Net^R16 (``reuse_factors``): Net^T with ReLU-reuse of factor N in
   place of each remaining ReLU of the remaining stages;
6. Net, Net^T, Net^C and every Net^RN are trained with knowledge distillation from the
   base (Hinton's: ``temperature`` 4 in the paper; the loss adds ``distill_weight``
   times the KL term). With ``distill: false`` they go through the run's evaluator.

The result is the ledger's cost-quality front (with ``target=relu``: ReLUs vs accuracy)
over the base and these networks, and a table of their stagewise ReLU counts.

``criticality`` lists the stages most critical first (DeepReDuce's order for ResNets on
CIFAR-100, S3 > S2 > S4 > S1, by default); with ``measure_criticality`` the order is
measured instead, by DeepReDuce's criterion: each stage is trained with only its own
ReLUs kept (the other stages culled), and the more accurate such network marks the more
critical stage. The space needs the ``relu_stages`` capability (``spaces/relu_reuse.py``).
"""

from __future__ import annotations

from nas import NASError, Searcher, register_searcher
from nas.costs import format_cost
from nas.training.evaluator import TrainEvaluator


@register_searcher("deepreduce")
class DeepReDuce(Searcher):
    """Fields: ``base`` (a preset of the space or an arch JSON file), ``criticality`` (stages,
    most critical first: DeepReDuce's ResNet order), ``measure_criticality`` (measure the order,
    each stage trained with only its ReLUs kept), ``reuse_factors`` (applied to the thinned
    network), ``channel_scale``, ``distill`` (train the derived networks with distillation from
    the base, at the paper's ``distill_weight`` and ``temperature``). Selects ``target=relu``
    unless the command line names a target."""

    requires = ("relu_stages",)
    config_defaults = {"target": "relu"}

    def __init__(self, base: str = "resnet18_m16", criticality=(3, 2, 4, 1), measure_criticality: bool = False,
                 reuse_factors=(4, 8, 16), channel_scale: float = 0.5, distill: bool = True,
                 distill_weight: float = 0.9, temperature: float = 4.0):
        self.base = base
        try:
            self.criticality = [int(k) for k in criticality]
        except (TypeError, ValueError):
            raise NASError(f"searcher.criticality must be a list of stages, most critical first, e.g. [3, 2, 4, 1]; "
                           f"got {criticality!r}") from None
        self.measure_criticality = bool(measure_criticality)
        try:
            self.reuse_factors = sorted({int(n) for n in reuse_factors})
        except (TypeError, ValueError):
            raise NASError(f"searcher.reuse_factors must be a list of ReLU-reuse factors, e.g. [4, 8, 16]; "
                           f"got {reuse_factors!r}") from None
        if not 0 < channel_scale < 1:
            raise NASError(f"searcher.channel_scale must be in (0, 1), got {channel_scale}")
        if distill_weight < 0 or temperature <= 0:
            raise NASError(f"searcher.distill_weight must be >= 0 and searcher.temperature > 0, got "
                           f"{distill_weight} and {temperature}")
        self.channel_scale = float(channel_scale)
        self.distill, self.distill_weight, self.temperature = bool(distill), float(distill_weight), float(temperature)

    def check(self, space) -> None:
        super().check(space)
        space.resolve_arch(self.base, "searcher.base")  # a wrong base is said before the run starts

    def check_order(self, order, stages: int) -> list[int]:
        if sorted(order) != list(range(1, stages + 1)):
            raise NASError(f"searcher.criticality must list the stages 1..{stages} once each, most critical "
                           f"first; got {list(order)}")
        return list(order)

    def _teacher(self, problem, base):
        """The base's evaluation, and a function giving its trained weights: those of this
        run, from the run directory after a resume, or else trained again (deterministically:
        the same weights the base's evaluation had), only when a network still needs them."""
        import torch

        from nas.export import save_atomic

        folder = problem.checkpoint_folder("deepreduce")
        path = folder / "teacher.pt" if folder is not None else None
        trained = {}

        def train_base(space, arch):
            score = problem.evaluator.evaluate(space, arch)
            trained["model"] = score.model
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                save_atomic({"state_dict": score.model.state_dict()}, path)
            return score

        def teacher():
            if "model" not in trained:
                if path is not None and path.exists():
                    model = problem.space.build(base)
                    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["state_dict"])
                    trained["model"] = model
                else:
                    train_base(problem.space, base)
            return trained["model"]

        return problem.evaluate(base, train_base), teacher

    def stage_criticality(self, problem, base) -> tuple[list[int], dict[int, float]]:
        """DeepReDuce's criticality: accuracy with only stage k's ReLUs kept, per stage."""
        space = problem.space
        stages = range(1, len(space.stage_relus(base)) + 1)
        accuracy = {}
        for k in stages:
            only_k = space.treat_stages(base, [s for s in stages if s != k], "cull")
            accuracy[k] = problem.evaluate(only_k).quality
        return sorted(stages, key=lambda k: (-accuracy[k], k)), accuracy

    def search(self, problem):
        space = problem.space
        base = self.checked_base(problem)
        n_stages, measuring = len(space.stage_relus(base)), self.measure_criticality
        problem.begin(1 + 4 + len(self.reuse_factors) + (n_stages if measuring else 0), desc="deepreduce")
        base_eval, teacher = self._teacher(problem, base)                       # the base, trained
        stage_accuracy = None
        if measuring:                                                           # criticality
            order, stage_accuracy = self.stage_criticality(problem, base)
        else:
            order = list(self.criticality)
        relus = space.stage_relus(base)
        culled = order[-1] if relus[order[-1] - 1] == max(relus) else None     # conditional cull
        networks = self.derived_networks(space, base, culled)                   # thin, scale, reuse
        rows = [{"name": "base", "arch": dict(base), "stage_relus": relus, "relus": sum(relus),
                 "quality": base_eval.quality, "cost": base_eval.cost}]
        scorer = self.distilled_scorer(problem, teacher) if self.distill else None
        for name, arch in networks:
            evaluation = problem.evaluate(arch, scorer)
            stage = space.stage_relus(arch)
            rows.append({"name": name, "arch": dict(arch), "stage_relus": stage, "relus": sum(stage),
                         "quality": evaluation.quality, "cost": evaluation.cost})
        lines = self.report_lines(problem, order, stage_accuracy, culled, rows)
        return problem.result(criticality=order, stage_accuracy=stage_accuracy, culled_stage=culled,
                              networks=rows, report=lines)

    def checked_base(self, problem):
        """The base arch, once the evaluator, the criticality and the space's treatments fit."""
        space, evaluator = problem.space, problem.evaluator
        if self.distill and not isinstance(evaluator, TrainEvaluator):
            raise NASError(f"searcher 'deepreduce' trains its networks with distillation from the base and needs "
                           f"evaluator=train; evaluator {evaluator.name!r} cannot (or set searcher.distill=false)")
        base = space.resolve_arch(self.base, "searcher.base")
        if not self.measure_criticality:
            self.check_order(self.criticality, len(space.stage_relus(base)))
        for treatment in ("cull", "thin", *(f"thin_reuse{n}" for n in self.reuse_factors)):
            if treatment not in space.treatments:
                raise NASError(f"searcher 'deepreduce' needs ReLU treatment {treatment!r}, which space.treatments "
                               f"({', '.join(space.treatments)}) leaves out")
        return base

    def derived_networks(self, space, base, culled) -> list[tuple[str, object]]:
        """Algorithm 2's networks: the (culled) base, thinned, channel-scaled, ReLU-reused."""
        net = space.treat_stages(base, [culled], "cull") if culled else base
        remaining = [k for k in range(1, len(space.stage_relus(base)) + 1) if k != culled]
        thinned = space.treat_stages(net, remaining, "thin")
        networks = [("Net" if culled else "Net (nothing culled)", net), ("Net^T", thinned),
                    ("Net^C", space.scale_channels(thinned, self.channel_scale))]
        return networks + [(f"Net^R{n}", space.treat_stages(thinned, remaining, f"thin_reuse{n}"))
                           for n in self.reuse_factors]

    def distilled_scorer(self, problem, teacher):
        def scorer(space, arch):
            return problem.evaluator.evaluate(space, arch, teacher=teacher(), distill_weight=self.distill_weight,
                                              temperature=self.temperature)
        return scorer

    def report_lines(self, problem, order, stage_accuracy, culled, rows) -> list[str]:
        unit, metric = problem.cost_model.unit, problem.evaluator.metric
        how = f"with distillation (T={self.temperature:g}, weight {self.distill_weight:g})" if self.distill else \
            f"by evaluator {problem.evaluator.name!r}"
        lines = ["criticality (most critical first): " + " > ".join(f"S{k}" for k in order)
                 + (" (measured: " + ", ".join(f"S{k} alone {stage_accuracy[k]:.4f}" for k in order) + ")"
                    if stage_accuracy is not None else " (given)"),
                 f"culled: S{culled} (least critical, most ReLUs)" if culled else
                 f"culled: none (the least critical stage S{order[-1]} does not hold the most ReLUs)",
                 f"networks trained {how}:"]
        for row in rows:
            lines.append(f"  {row['name']:<22} ReLUs {row['relus']:>9,} (stages {row['stage_relus']})  "
                         f"{metric} {row['quality']:.4f}  {problem.cost_model.name} {format_cost(row['cost'], unit)}")
        return lines
