"""Differentiable search: weights and a relaxed architecture trained together.

On a space with the ``relaxed`` capability (:mod:`nas.training.relax`), one network holds the
searched decisions as continuous parameters. Every step trains weights and architecture
parameters jointly on one batch, on

    cross-entropy + penalty_weight * penalty + cost_weight * expected_cost / base_cost

``penalty`` is the relaxation's structural term: for RAN-e's AFRB SuperNet problem (3)'s
``sum((alpha - 1)^2)``, which pulls every unit towards the linear form that collapses. The
cost term (``cost_weight > 0``, the cost-aware variant the RAN-e paper leaves open) is
the relaxation's expected cost under the run's cost model (a LUT's latency, MACs, ...)
relative to the base arch's, so the search also weighs what a choice costs on the target.
Under a run's ``budget``, the cost term is ``cost_weight * max(0, expected_cost / budget - 1)``:
the search pays for cost only above the budget.

The result is the Arch the relaxation stands for at the end (AFRB: units whose alpha is
within ``band`` collapse, the others become IBNs with their first activation restored;
mixed ops: the argmax; under a budget it misses, the relaxation's most probable changes
that fit, as TuNAS's :func:`~searchers.tunas.fit_budget`), trained from scratch by the run's
evaluator, with the trajectory of the architecture parameters, and the base arch's and the
result's MACs and cost.

``micro_batches`` (default: one per process) cuts each step's batch into slices, each
with its own forward pass (and, for mixed ops, its own Gumbel sample), weighted by its
share of the batch. Under ``torchrun`` the processes share the micro-batches and add
their gradients (:mod:`nas.training.distributed`), so the architecture parameters stay in sync
and a run equals a one-process run with the same ``micro_batches``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from nas import NASError, Searcher, register_searcher
from nas.costs import format_cost
from nas.ledger import flat_progress
from nas.lut import describe_latency, latency_report
from nas.training.harness import WeightTraining, cosine_lr, set_lr
from nas.training.train import rng_states, set_rng_states
from searchers.tunas import fit_budget, repair_line


@register_searcher("differentiable")
class Differentiable(Searcher):
    """Differentiable search (RAN-e's problem (3) on the AFRB SuperNet; GDAS-style mixed ops on
    uib): loss = CE + ``penalty_weight`` * penalty + ``cost_weight`` * expected cost / base cost.
    Weights: SGD at ``lr`` (cosine schedule); architecture parameters: Adam at ``arch_lr``.
    AFRB: ``alpha_init`` (0: start as IBNs), ``cost_sigma`` (the width of the collapse
    probability around alpha = 1), ``band`` (units whose alpha ends in it collapse); mixed
    ops: ``tau`` (Gumbel-softmax temperature). ``base``: the arch held for the decisions not
    searched (a preset or an arch JSON file; null: the space's default); ``evaluate_base``: also
    train the base from scratch; ``snapshots``: trajectory points recorded."""

    requires = ("relaxed",)
    needs_layer_costs = True  # the relaxation's expected cost sums layer costs
    distributed = True
    signed_fields = ("alpha_init",)  # a PReLU slope starts anywhere

    def __init__(self, steps: int = 300, batch_size: int = 64, lr: float = 0.05, momentum: float = 0.9,
                 weight_decay: float = 4e-5, arch_lr: float = 0.05, penalty_weight: float = 0.01,
                 cost_weight: float = 0.0, band: list = (0.8, 1.3), alpha_init: float = 0.0,
                 cost_sigma: float = 0.25, tau: float = 1.0, base: str | None = None, evaluate_base: bool = False,
                 snapshots: int = 20, measure_latency: bool = True, device: str = "auto",
                 checkpoint_every: int = 50, micro_batches: int | None = None):
        if steps < 1 or batch_size < 2:
            raise NASError(f"searcher.steps must be >= 1 and batch_size >= 2, got {steps}, {batch_size}")
        if lr <= 0 or arch_lr <= 0:
            raise NASError(f"searcher.lr and searcher.arch_lr must be > 0, got {lr}, {arch_lr}")
        if penalty_weight < 0 or cost_weight < 0:
            raise NASError(f"searcher.penalty_weight and cost_weight must be >= 0, got {penalty_weight}, {cost_weight}")
        try:
            lo, hi = (float(b) for b in band)
        except (TypeError, ValueError):
            raise NASError(f"searcher.band must be two numbers [low, high], got {band!r}") from None
        if not lo <= 1 <= hi:
            raise NASError(f"searcher.band must contain 1 (alpha = 1 is the linear unit), got {list(band)}")
        if snapshots < 1:
            raise NASError(f"searcher.snapshots must be >= 1, got {snapshots}")
        self.steps, self.batch_size, self.lr, self.momentum = steps, batch_size, lr, momentum
        self.weight_decay, self.arch_lr = weight_decay, arch_lr
        self.penalty_weight, self.cost_weight, self.band = penalty_weight, cost_weight, (lo, hi)
        self.relax_options = {"alpha_init": alpha_init, "cost_sigma": cost_sigma, "tau": tau}
        self.base, self.evaluate_base, self.snapshots = base, evaluate_base, snapshots
        self.measure_latency, self.device = measure_latency, device
        if checkpoint_every < 1:
            raise NASError(f"searcher.checkpoint_every must be >= 1, got {checkpoint_every}")
        self.checkpoint_every, self.micro_batches = checkpoint_every, micro_batches

    def check(self, space) -> None:
        super().check(space)
        self.base_arch(space)  # a wrong base is said before the run starts

    def base_arch(self, space):
        """The arch whose undecided parts are relaxed: ``base`` (a preset or an arch JSON
        file), else the space's default."""
        try:
            return space.resolve_arch(self.base) if self.base else space.default_arch()
        except NASError as exc:
            raise NASError(f"searcher.base: {exc}") from None

    def train_relaxation(self, problem) -> tuple:
        """The search's training: ``problem.space``'s relaxation of the base, weights and
        architecture parameters trained together (resumed from the run's checkpoint if
        any). Returns ``(base, relaxation, joint)``."""
        space = problem.space
        base = self.base_arch(space)
        training = WeightTraining(problem, self, "trains weights", {"batch_size": (self.batch_size, 2)},
                                  {"space": space.config(), "base": dict(base), "budget": problem.budget})
        torch.manual_seed(problem.seed)
        relaxation = space.relaxed(base, seed=problem.seed, **self.relax_options)
        relaxation.bind_cost(problem.cost_model)
        relaxation.to(device=training.device, memory_format=torch.channels_last)
        joint = JointTraining(self, relaxation, training, problem.cost(base))
        joint.run()
        return base, relaxation, joint

    def search(self, problem):
        base, relaxation, joint = self.train_relaxation(problem)
        if not problem.world.is_main:
            return None  # the relaxation is trained; rank 0 evaluates and reports its result
        arch = relaxation.derive(band=self.band)
        repair = {}
        if problem.budget is not None and not problem.within_budget(problem.cost(arch)):
            distributions = relaxation.distributions()
            arch, repair["budget_repair"] = fit_budget(problem, arch, {n: p for n, (_, p) in distributions.items()},
                                                       {n: options for n, (options, _) in distributions.items()})
        if self.evaluate_base:
            problem.evaluate(base)
        evaluation = problem.evaluate(arch)
        before, after = self.describe(problem, relaxation, base), self.describe(problem, relaxation, arch)
        extras = {"relaxation": relaxation.state_kind, "final": relaxation.state(), "trajectory": joint.trajectory,
                  "band": list(self.band), "before": before, "after": after, **repair}
        if self.measure_latency:
            extras.update(latency_report(problem, arch))
        fitted = [repair_line(problem, None, repair["budget_repair"], "the derived arch")] if repair else []
        extras["report"] = fitted + self.report_lines(problem, before, after, extras, evaluation)
        return problem.result(**extras)

    @staticmethod
    def describe(problem, relaxation, arch) -> dict:
        ops = problem.space.ops(arch)
        return {"arch": dict(arch), "macs": sum(op.macs() for op in ops), "cost": problem.cost(arch),
                **relaxation.summary(arch)}

    @staticmethod
    def report_lines(problem, before: dict, after: dict, extras: dict, evaluation) -> list[str]:
        """What the CLI prints: units collapsed, MACs and cost before and after, the result's quality."""
        unit, name = problem.cost_model.unit, problem.cost_model.name
        lines = []
        if "collapsed" in after:
            lines.append(f"collapsed: {after['collapsed']} of {after['units']} units "
                         f"(base: {before['collapsed']})")
        lines.append(f"MACs: {before['macs'] / 1e6:.3f}M -> {after['macs'] / 1e6:.3f}M "
                     f"({after['macs'] / before['macs'] - 1:+.1%})")
        lines.append(f"{name}: {format_cost(before['cost'], unit)} -> {format_cost(after['cost'], unit)} "
                     f"({after['cost'] / before['cost'] - 1:+.1%})")
        if "measured_latency_ms" in extras:
            lines.append(describe_latency(extras))
        lines.append(f"{problem.evaluator.metric} of the result, trained from scratch: {evaluation.quality:.4f}")
        return lines


class JointTraining:
    """Weights (the relaxation's optimizer, cosine schedule) and architecture parameters
    (Adam) trained together on task loss + penalty + expected cost, step by step."""

    def __init__(self, searcher: Differentiable, relaxation, training, base_cost: float):
        self.searcher, self.relaxation, self.training, self.base_cost = searcher, relaxation, training, base_cost
        self.problem = training.problem
        self.weights = relaxation.weight_optimizer(searcher.lr, searcher.momentum, searcher.weight_decay)
        self.arch_opt = torch.optim.Adam(relaxation.arch_parameters().values(), lr=searcher.arch_lr)
        self.gen = torch.Generator().manual_seed(self.problem.seed)
        self.pool = torch.arange(len(training.data.train))
        self.every = max(1, searcher.steps // searcher.snapshots)
        self.trajectory = []

    def run(self) -> None:
        first_step = self.load(self.training.checkpoint.load())
        bar = self.training.progress_bar(self.searcher.steps, initial=first_step)
        try:
            with self.training.checkpoint:
                for step in range(first_step, self.searcher.steps):
                    task, expected = self.step(step)
                    bar.update(1)
                    bar.set_postfix(loss=f"{task:.3f}", cost=f"{expected:.4g}", refresh=False)
                    self.training.checkpoint.step_done(step, lambda step=step: self.state(step))
        finally:
            bar.close()

    def step(self, step: int) -> tuple[float, float]:
        """One joint step over the micro-batches (and a snapshot every ``every`` steps);
        returns the task loss and the expected cost."""
        searcher, relaxation, training = self.searcher, self.relaxation, self.training
        set_lr(self.weights, cosine_lr(searcher.lr, step, searcher.steps))
        batch = training.batches(self.pool, searcher.batch_size, self.gen)
        noise = relaxation.generators()
        # each micro-batch's own random draws (Gumbel noise), the same in whichever process runs it
        noise_seeds = [int(torch.randint(2 ** 62, (1,), generator=self.gen)) for _ in range(training.n_micro)] \
            if noise else []
        relaxation.train()
        self.weights.zero_grad(set_to_none=True)
        self.arch_opt.zero_grad(set_to_none=True)
        penalty, expected = relaxation.penalty(), relaxation.expected_cost()
        extra = searcher.penalty_weight * penalty
        if searcher.cost_weight:
            budget = self.problem.budget
            relative = expected / self.base_cost if budget is None else F.relu(expected / budget - 1)
            extra = extra + searcher.cost_weight * relative
        if training.world.is_main and extra.requires_grad:  # terms of the architecture alone: counted once
            extra.backward()  # first: the sums of gradients then run in the same order in any world

        def task_loss(p, x, y):
            for j, g in enumerate(noise):
                g.manual_seed(noise_seeds[p] + j)
            return F.cross_entropy(relaxation(x), y)

        task = training.step(relaxation, [self.weights, self.arch_opt], batch, searcher.batch_size, task_loss)
        loss = task + float(extra.detach())
        if not math.isfinite(loss):
            raise NASError(f"differentiable search diverged at step {step} (loss {loss}); lower "
                           "searcher.lr or searcher.arch_lr")
        self.weights.step()
        self.arch_opt.step()
        if step % self.every == 0 or step == searcher.steps - 1:
            self.snapshot(step, task, penalty.item(), float(expected.detach()))
        return task, float(expected.detach())

    def snapshot(self, step: int, task: float, penalty: float, expected: float) -> None:
        kind = self.relaxation.state_kind
        self.trajectory.append({"step": step, "loss": task, "penalty": penalty, "expected_cost": expected,
                                kind: self.relaxation.state()})
        options = {d.name: d.options for d in self.problem.space.decisions()}  # labels of a relaxation's probabilities
        self.problem.log_progress(step, {"loss": task, "penalty": penalty, "expected_cost": expected,
                                         **flat_progress("P " if kind == "probs" else "alpha ",
                                                         self.trajectory[-1][kind], options)})

    def state(self, step: int) -> dict:
        """Everything a resumed run needs to continue after ``step`` as an uninterrupted one."""
        return {"step": step + 1, "relaxation": self.relaxation.state_dict(),
                "weights_optimizer": self.weights.state_dict(), "arch_optimizer": self.arch_opt.state_dict(),
                "rng": rng_states(self.gen, None),
                "relaxation_generators": [g.get_state() for g in self.relaxation.generators()],
                "trajectory": self.trajectory}

    def load(self, resumed: dict | None) -> int:
        """Continue from a checkpoint's :meth:`state` (None: start); the step to continue at."""
        if resumed is None:
            return 0
        self.relaxation.load_state_dict(resumed["relaxation"])
        self.weights.load_state_dict(resumed["weights_optimizer"])
        self.arch_opt.load_state_dict(resumed["arch_optimizer"])
        set_rng_states(resumed["rng"], self.gen, None)
        for g, g_state in zip(self.relaxation.generators(), resumed["relaxation_generators"]):
            g.set_state(g_state)
        self.trajectory = list(resumed["trajectory"])
        return resumed["step"]
