"""Differentiable search: weights and a relaxed architecture trained together.

On a space with the ``relaxed`` capability (:mod:`nas.relax`), one network holds the
searched decisions as continuous parameters. Every step trains weights and architecture
parameters jointly on one batch, on

    cross-entropy + penalty_weight * penalty + cost_weight * expected_cost / base_cost

``penalty`` is the relaxation's structural term: for RAN-e's AFRB SuperNet problem (3)'s
``sum((alpha - 1)^2)``, which pulls every unit towards the linear form that collapses. The
cost term (``cost_weight > 0``, the cost-aware variant the RAN-e paper leaves open) is
the relaxation's expected cost under the run's cost model (a LUT's latency, MACs, ...)
relative to the base arch's, so the search also weighs what a choice costs on the target.

The result is the Arch the relaxation stands for at the end (AFRB: units whose alpha is
within ``band`` collapse, the others become IBNs with their first activation restored;
mixed ops: the argmax), trained from scratch by the run's evaluator, with the trajectory
of the architecture parameters, and the base arch's and the result's MACs and cost.

``micro_batches`` (default: one per process) cuts each step's batch into slices, each
with its own forward pass (and, for mixed ops, its own Gumbel sample), weighted by its
share of the batch. Under ``torchrun`` the processes share the micro-batches and add
their gradients (:mod:`nas.distributed`), so the architecture parameters stay in sync
and a run equals a one-process run with the same ``micro_batches``.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from nas import NASError, Searcher, register_searcher
from nas.costs import format_cost
from nas.distributed import RunningStats, sum_gradients
from nas.ledger import flat_progress
from nas.lut import describe_latency, latency_report
from nas.train import TrainingCheckpoint, load_batch, resolve_device, rng_states, sample_indices, set_rng_states


@register_searcher("differentiable")
class Differentiable(Searcher):
    requires = ("relaxed",)
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
        from nas.run import load_arch

        try:
            return load_arch(self.base, space) if self.base else space.default_arch()
        except NASError as exc:
            raise NASError(f"searcher.base: {exc}") from None

    def search(self, problem):
        space = problem.space
        data = getattr(problem.evaluator, "data", None)
        if data is None:
            raise NASError(f"searcher 'differentiable' trains weights and needs a data set; evaluator "
                           f"{problem.evaluator.name!r} has none (use evaluator=train)")
        device = getattr(problem.evaluator, "device", None) if self.device == "auto" else None
        device = device or resolve_device(self.device)
        world = problem.world
        n_micro, mine = world.micro_batches(self.micro_batches, "searcher.micro_batches")
        if self.batch_size < 2 * n_micro:
            raise NASError(f"searcher.batch_size ({self.batch_size}) must give each of the {n_micro} micro-batches "
                           "at least 2 examples")
        base = self.base_arch(space)
        torch.manual_seed(problem.seed)
        relaxation = space.relaxed(base, seed=problem.seed, **self.relax_options)
        relaxation.bind_cost(problem.cost_model)
        base_cost = problem.cost(base)
        relaxation.to(device=device, memory_format=torch.channels_last)
        weights = relaxation.weight_optimizer(self.lr, self.momentum, self.weight_decay)
        arch_params = relaxation.arch_parameters()
        arch_opt = torch.optim.Adam(arch_params.values(), lr=self.arch_lr)
        gen = torch.Generator().manual_seed(problem.seed)
        pool = torch.arange(len(data.train))
        every = max(1, self.steps // self.snapshots)
        trajectory = []
        options = {d.name: d.options for d in space.decisions()}  # labels of a relaxation's probabilities
        # Weights, architecture parameters, both optimizers, random states and position, so a
        # killed (or SIGTERM-stopped) run resumes where it was and ends as an uninterrupted one.
        identity = {"searcher": {**{k: v for k, v in vars(self).items()
                                    if k not in ("measure_latency", "device", "checkpoint_every")},
                                 "micro_batches": n_micro},
                    "seed": problem.seed, "space": space.config(), "base": dict(base)}
        checkpoint = TrainingCheckpoint(
            Path(problem.work_dir) / "differentiable" / "state.pt" if problem.work_dir else None,
            self.checkpoint_every, identity, world)
        resumed = checkpoint.load()
        first_step = 0
        if resumed is not None:
            relaxation.load_state_dict(resumed["relaxation"])
            weights.load_state_dict(resumed["weights_optimizer"])
            arch_opt.load_state_dict(resumed["arch_optimizer"])
            set_rng_states(resumed["rng"], gen, None)
            for g, g_state in zip(relaxation.generators(), resumed["relaxation_generators"]):
                g.set_state(g_state)
            first_step, trajectory = resumed["step"], list(resumed["trajectory"])

        def state():
            return {"step": step + 1, "relaxation": relaxation.state_dict(), "weights_optimizer": weights.state_dict(),
                    "arch_optimizer": arch_opt.state_dict(), "rng": rng_states(gen, None),
                    "relaxation_generators": [g.get_state() for g in relaxation.generators()],
                    "trajectory": trajectory}

        bar = tqdm(total=self.steps, initial=first_step, desc="differentiable", unit="step",
                   disable=not problem.show_progress, dynamic_ncols=True)
        try:
            with checkpoint:
                for step in range(first_step, self.steps):
                    self._step(step, relaxation, weights, arch_opt, base_cost, space, data, pool, gen, device, every,
                               options, trajectory, problem, bar, n_micro, mine)
                    checkpoint.step_done(step, state)
        finally:
            bar.close()
        if not world.is_main:
            return None  # the relaxation is trained; rank 0 evaluates and reports its result
        arch = relaxation.derive(band=self.band)
        if self.evaluate_base:
            problem.evaluate(base)
        evaluation = problem.evaluate(arch)

        def describe(a):
            ops = space.ops(a)
            return {"arch": dict(a), "macs": sum(op.macs() for op in ops), "cost": problem.cost(a),
                    **relaxation.summary(a)}

        before, after = describe(base), describe(arch)
        extras = {"relaxation": relaxation.state_kind, "final": relaxation.state(), "trajectory": trajectory,
                  "band": list(self.band), "before": before, "after": after}
        if self.measure_latency:
            extras.update(latency_report(problem, arch))
        unit = problem.cost_model.unit
        lines = []
        if "collapsed" in after:
            lines.append(f"collapsed: {after['collapsed']} of {after['units']} units "
                         f"(base: {before['collapsed']})")
        lines.append(f"MACs: {before['macs'] / 1e6:.3f}M -> {after['macs'] / 1e6:.3f}M "
                     f"({after['macs'] / before['macs'] - 1:+.1%})")
        lines.append(f"{problem.cost_model.name}: {format_cost(before['cost'], unit)} -> {format_cost(after['cost'], unit)} "
                     f"({after['cost'] / before['cost'] - 1:+.1%})")
        if "measured_latency_ms" in extras:
            lines.append(describe_latency(extras))
        lines.append(f"{problem.evaluator.metric} of the result, trained from scratch: {evaluation.quality:.4f}")
        extras["report"] = lines
        return problem.result(**extras)

    def _step(self, step, relaxation, weights, arch_opt, base_cost, space, data, pool, gen, device, every, options,
              trajectory, problem, bar, n_micro: int, mine: range) -> None:
        """One joint step of weights and architecture parameters over ``n_micro``
        micro-batches, of which this process computes ``mine`` (and a snapshot every
        ``every`` steps)."""
        world = problem.world
        for group in weights.param_groups:  # cosine schedule
            group["lr"] = self.lr * 0.5 * (1 + math.cos(math.pi * step / self.steps))
        batch = torch.tensor_split(sample_indices(pool, self.batch_size, gen), n_micro)
        noise = relaxation.generators()
        # each micro-batch's own random draws (Gumbel noise), the same in whichever process runs it
        noise_seeds = [int(torch.randint(2 ** 62, (1,), generator=gen)) for _ in range(n_micro)] if noise else []
        relaxation.train()
        weights.zero_grad(set_to_none=True)
        arch_opt.zero_grad(set_to_none=True)
        penalty = relaxation.penalty()
        expected = relaxation.expected_cost()
        extra = self.penalty_weight * penalty
        if self.cost_weight:
            extra = extra + self.cost_weight * expected / base_cost
        if world.is_main and extra.requires_grad:  # terms of the architecture alone: counted once
            extra.backward()  # first: the sums of gradients then run in the same order in any world
        task = 0.0
        with RunningStats(relaxation, world, n_micro) as stats:
            for p in mine:
                for j, g in enumerate(noise):
                    g.manual_seed(noise_seeds[p] + j)
                x, y = load_batch(data, batch[p], space.input_shape, device)
                share = F.cross_entropy(relaxation(x), y) * (len(batch[p]) / self.batch_size)
                share.backward()
                stats.pass_done()
                task += share.item()
        (task,) = sum_gradients(world, [weights, arch_opt], [task])
        loss = task + float(extra.detach())
        if not math.isfinite(loss):
            raise NASError(f"differentiable search diverged at step {step} (loss {loss}); lower "
                           "searcher.lr or searcher.arch_lr")
        weights.step()
        arch_opt.step()
        if step % every == 0 or step == self.steps - 1:
            trajectory.append({"step": step, "loss": task, "penalty": penalty.item(),
                               "expected_cost": float(expected.detach()), relaxation.state_kind: relaxation.state()})
            snapshot = trajectory[-1]
            problem.log_progress(step, {
                **{k: snapshot[k] for k in ("loss", "penalty", "expected_cost")},
                **flat_progress("P " if relaxation.state_kind == "probs" else "alpha ",
                                snapshot[relaxation.state_kind], options)})
        bar.update(1)
        bar.set_postfix(loss=f"{task:.3f}", cost=f"{float(expected.detach()):.4g}", refresh=False)
