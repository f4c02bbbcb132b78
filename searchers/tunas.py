"""TuNAS-style search (Bender et al., 2020) in MobileNetV4's two stages.

One weight-sharing supernet; a controller of independent categorical distributions, one
per searched decision (logits start at zero). Every step trains the shared weights on one
sampled path (on a batch of the weights' share of the training data), then samples
another path, scores it on a batch of the controller's share, and updates the logits by
REINFORCE against an exponential moving average baseline. The reward is the absolute
one, ``quality + beta * |cost / target - 1|``. For the first ``warmup`` share of a stage's
steps the controller's learning rate is zero, and each decision takes its largest option
(every kernel, width and depth enabled) with a probability that decays from 1 to 0.

``stages=2`` (MobileNetV4): stage 1 searches the ``coarse`` decisions (stage widths and
depths) with every block held at the space's default (an inverted bottleneck, expansion
4, 3x3 depthwise), stage 2 the ``fine`` ones (the depthwise layers, kernels, expansion,
Fused-IB) on the stage-1 shape. ``stages=1`` searches everything at once (the baseline).
The result is the argmax architecture, trained from scratch by the run's evaluator and
priced by its cost model; with a measured LUT, its latency is also measured end to end.

``micro_batches`` (default: one per process) splits each step like TuNAS's cores: the
batch is cut into that many slices, each trained (and, for the controller, rewarded) on
its own sampled path; weight gradients are averaged, the controller's REINFORCE gradient
averages the paths' advantages, and the baseline follows their mean reward. Under
``torchrun`` the processes share the micro-batches (:mod:`nas.distributed`), and a run
equals a one-process run with the same ``micro_batches``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from nas import Arch, NASError, Searcher, register_searcher
from nas.distributed import RunningStats, sum_gradients
from nas.ledger import flat_progress
from nas.lut import latency_report
from nas.train import TrainingCheckpoint, load_batch, rng_states, sample_indices, set_rng_states


class Controller:
    """Independent categorical distributions over the options of ``decisions``."""

    def __init__(self, decisions, lr: float):
        self.decisions = list(decisions)
        self.logits = {d.name: torch.zeros(len(d.options), requires_grad=True) for d in self.decisions}
        self.optimizer = torch.optim.Adam(list(self.logits.values()), lr=lr)

    def probs(self) -> dict[str, list[float]]:
        return {n: F.softmax(v.detach(), 0).tolist() for n, v in self.logits.items()}

    def sample(self, gen: torch.Generator) -> dict[str, int]:
        with torch.no_grad():
            return {n: int(torch.multinomial(F.softmax(v, 0), 1, generator=gen)) for n, v in self.logits.items()}

    def argmax(self) -> dict[str, int]:
        return {n: int(v.detach().argmax()) for n, v in self.logits.items()}

    def values(self, indices: dict[str, int]) -> dict:
        return {d.name: d.options[indices[d.name]] for d in self.decisions}

    def reinforce(self, samples: list[tuple[dict[str, int], float]]) -> None:
        """One REINFORCE step on ``(indices, advantage)`` samples: raise the log-probability
        of each sample's ``indices`` in proportion to its ``advantage`` (reward minus
        baseline), averaged over the samples."""
        loss = 0
        for indices, advantage in samples:
            log_prob = sum(F.log_softmax(self.logits[n], 0)[i] for n, i in indices.items())
            loss = loss + (-advantage * log_prob) / len(samples)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()


@register_searcher("tunas")
class TuNAS(Searcher):
    requires = ("supernet",)
    distributed = True
    signed_fields = ("beta",)  # the cost penalty's weight is negative

    def __init__(self, stages: int = 2, steps: int = 250, batch_size: int = 64, reward_batch_size: int = 256,
                 warmup: float = 0.25, lr: float = 0.05, momentum: float = 0.9, weight_decay: float = 4e-5,
                 controller_lr: float = 0.1, baseline_momentum: float = 0.95, beta: float = -0.1,
                 target_cost: float | None = None, controller_share: float = 0.2, measure_latency: bool = True,
                 device: str = "auto", checkpoint_every: int = 50, micro_batches: int | None = None):
        if stages not in (1, 2):
            raise NASError(f"searcher.stages must be 1 (one-stage baseline) or 2 (MobileNetV4's), got {stages}")
        if steps < 1 or batch_size < 2 or reward_batch_size < 1:
            raise NASError(f"searcher.steps must be >= 1, batch_size >= 2 and reward_batch_size >= 1, got "
                           f"{steps}, {batch_size}, {reward_batch_size}")
        if not 0 <= warmup < 1 or not 0 < controller_share < 1 or not 0 <= baseline_momentum < 1:
            raise NASError("searcher.warmup must be in [0, 1), controller_share in (0, 1) and "
                           "baseline_momentum in [0, 1)")
        if lr <= 0 or controller_lr <= 0:
            raise NASError(f"searcher.lr and searcher.controller_lr must be > 0, got {lr}, {controller_lr}")
        if beta > 0:
            raise NASError(f"searcher.beta must be <= 0 (a penalty for missing the target), got {beta}")
        if target_cost is not None and not target_cost > 0:
            raise NASError(f"searcher.target_cost must be > 0, got {target_cost}")
        self.stages, self.steps, self.batch_size, self.reward_batch_size = stages, steps, batch_size, reward_batch_size
        self.warmup, self.lr, self.momentum, self.weight_decay = warmup, lr, momentum, weight_decay
        self.controller_lr, self.baseline_momentum, self.beta = controller_lr, baseline_momentum, beta
        self.target_cost, self.controller_share = target_cost, controller_share
        self.measure_latency, self.device = measure_latency, device
        if checkpoint_every < 1:
            raise NASError(f"searcher.checkpoint_every must be >= 1, got {checkpoint_every}")
        self.checkpoint_every, self.micro_batches = checkpoint_every, micro_batches

    # ------------------------------------------------------------------ setup
    def resolve_target(self, problem) -> tuple[float, str]:
        """The cost the search aims at: ``target_cost``, else the run's budget, else the
        median cost of 200 random archs of the space."""
        if self.target_cost is not None:
            return float(self.target_cost), "searcher.target_cost"
        if problem.budget is not None:
            return float(problem.budget), "budget"
        rng = np.random.default_rng(problem.seed)
        costs = [problem.cost(problem.space.sample(rng)) for _ in range(200)]
        return float(np.median(costs)), "median of 200 random archs"

    @staticmethod
    def _data(problem):
        data = getattr(problem.evaluator, "data", None)
        if data is None:
            raise NASError(f"searcher 'tunas' trains a supernet and needs a data set; evaluator "
                           f"{problem.evaluator.name!r} has none (use evaluator=train)")
        return data

    def plan(self, space) -> list[tuple[str, str | None]]:
        """(stage name, tag of the decisions it searches; None: all)."""
        if self.stages == 1:
            return [("one-stage", None)]
        for tag in ("coarse", "fine"):
            if not space.decisions(tag):
                raise NASError(f"two-stage tunas needs 'coarse' and 'fine' decisions; space {space.name!r} "
                               f"has no {tag!r} ones (use searcher.stages=1)")
        return [("stage1-coarse", "coarse"), ("stage2-fine", "fine")]

    # ------------------------------------------------------------------ search
    def search(self, problem):
        from nas.train import resolve_device

        space, data = problem.space, self._data(problem)
        # "auto": where the evaluator trains (it resolved "auto" already)
        device = getattr(problem.evaluator, "device", None) if self.device == "auto" else None
        device = device or resolve_device(self.device)
        target, target_from = self.resolve_target(problem)
        world = problem.world
        n_micro, mine = world.micro_batches(self.micro_batches, "searcher.micro_batches")
        if self.batch_size < 2 * n_micro or self.reward_batch_size < n_micro:
            raise NASError(f"searcher.batch_size ({self.batch_size}) must give each of the {n_micro} micro-batches "
                           f"at least 2 examples and reward_batch_size ({self.reward_batch_size}) at least 1")
        torch.manual_seed(problem.seed)
        supernet = space.supernet().to(device=device, memory_format=torch.channels_last)
        gen = torch.Generator().manual_seed(problem.seed)
        rng = np.random.default_rng(problem.seed)
        n = len(data.train)
        perm = torch.randperm(n, generator=gen)
        n_ctrl = max(1, int(n * self.controller_share))
        ctrl_idx, weight_idx = perm[:n_ctrl], perm[n_ctrl:]
        held = space.default_arch()
        stage_reports = []
        total_steps = self.steps * self.stages
        # Shared weights, optimizer, controller, baseline, random states and position, so a
        # killed (or SIGTERM-stopped) run resumes where it was and ends as an uninterrupted one.
        identity = {"searcher": {**{k: v for k, v in vars(self).items()
                                    if k not in ("measure_latency", "device", "checkpoint_every")},
                                 "micro_batches": n_micro},
                    "seed": problem.seed, "space": space.config(), "target": target}
        checkpoint = TrainingCheckpoint(Path(problem.work_dir) / "tunas" / "state.pt" if problem.work_dir else None,
                                        self.checkpoint_every, identity, world)
        resumed = checkpoint.load()
        first_stage = 0
        if resumed is not None:
            first_stage, held, stage_reports = resumed["stage"], Arch(resumed["held"]), resumed["stage_reports"]
            supernet.load_state_dict(resumed["supernet"])
        bar = tqdm(total=total_steps, desc="tunas", unit="step", disable=not problem.show_progress,
                   dynamic_ncols=True)
        paths = (n_micro, mine)
        try:
            with checkpoint:
                for i, (stage_name, tag) in enumerate(self.plan(space)):
                    if i < first_stage:
                        bar.update(self.steps)
                        continue
                    searched = space.decisions(tag)
                    report = self._run_stage(stage_name, searched, held, supernet, problem, data, weight_idx,
                                             ctrl_idx, target, gen, rng, device, bar, checkpoint, paths,
                                             {"stage": i, "held": dict(held), "stage_reports": stage_reports},
                                             resumed if i == first_stage else None)
                    held = report.pop("arch")
                    stage_reports.append(report)
        finally:
            bar.close()
        if not world.is_main:
            return None  # the search is trained; rank 0 evaluates and reports its result
        final = space.canonicalize(held)
        evaluation = problem.evaluate(final)
        extras = {"target_cost": target, "target_from": target_from, "stages": stage_reports,
                  "cost_error": (evaluation.cost - target) / target}
        if self.measure_latency:
            extras.update(latency_report(problem, final))
        return problem.result(**extras)

    def _run_stage(self, stage_name, searched, held, supernet, problem, data, weight_idx, ctrl_idx, target, gen, rng,
                   device, bar, checkpoint, paths, position: dict, resumed: dict | None) -> dict:
        space, world = problem.space, problem.world
        n_micro, mine = paths
        controller = Controller(searched, self.controller_lr)
        optimizer = supernet.optimizer(self.lr, self.momentum, self.weight_decay)
        warmup_steps = int(self.warmup * self.steps)
        baseline = None
        largest = {d.name: max(range(len(d.options)), key=lambda i, d=d: d.options[i])
                   for d in searched if all(isinstance(o, (int, float)) and not isinstance(o, bool) for o in d.options)}
        trajectory, rewards = [], []
        snapshot_every = max(1, self.steps // 10)
        options = {d.name: d.options for d in searched}
        first_step = 0
        if resumed is not None:
            first_step, baseline = resumed["step"], resumed["baseline"]
            rewards, trajectory = list(resumed["rewards"]), list(resumed["trajectory"])
            for name, logits in controller.logits.items():
                logits.data.copy_(resumed["controller"][name])
            controller.optimizer.load_state_dict(resumed["controller_optimizer"])
            optimizer.load_state_dict(resumed["optimizer"])
            set_rng_states(resumed["rng"], gen, rng)
            bar.update(first_step)

        def state():
            return {**position, "step": step + 1, "supernet": supernet.state_dict(), "optimizer": optimizer.state_dict(),
                    "controller": {n: v.detach().clone() for n, v in controller.logits.items()},
                    "controller_optimizer": controller.optimizer.state_dict(), "baseline": baseline,
                    "rewards": rewards, "trajectory": trajectory, "rng": rng_states(gen, rng)}

        def arch_of(indices):
            return space.canonicalize(held.replace(**controller.values(indices)))

        for step in range(first_step, self.steps):
            for group in optimizer.param_groups:  # cosine schedule over the stage
                group["lr"] = self.lr * 0.5 * (1 + math.cos(math.pi * step / self.steps))
            # shared-weight step: a path per micro-batch; every process draws them all
            sampled = []
            for _ in range(n_micro):
                indices = controller.sample(gen)
                if step < warmup_steps:
                    enable_all = 1.0 - step / warmup_steps
                    for name, i in largest.items():
                        if rng.random() < enable_all:
                            indices[name] = i
                sampled.append(indices)
            batch = torch.tensor_split(sample_indices(weight_idx, self.batch_size, gen), n_micro)
            supernet.train()
            optimizer.zero_grad(set_to_none=True)
            loss = 0.0
            with RunningStats(supernet, world, n_micro) as stats:
                for p in mine:
                    x, y = load_batch(data, batch[p], space.input_shape, device)
                    share = F.cross_entropy(supernet(x, arch_of(sampled[p])), y) * (len(batch[p]) / self.batch_size)
                    share.backward()
                    stats.pass_done()
                    loss += share.item()
            (loss,) = sum_gradients(world, [optimizer], [loss])
            if not math.isfinite(loss):
                raise NASError(f"supernet training diverged at {stage_name} step {step}; lower searcher.lr")
            optimizer.step()
            # controller step on other paths and a separate batch
            sampled = [controller.sample(gen) for _ in range(n_micro)]
            archs = [arch_of(indices) for indices in sampled]
            batch = torch.tensor_split(sample_indices(ctrl_idx, self.reward_batch_size, gen), n_micro)
            qualities = torch.zeros(n_micro, dtype=torch.float64)
            with torch.no_grad(), RunningStats(supernet, world, n_micro) as stats:
                for p in mine:
                    x, y = load_batch(data, batch[p], space.input_shape, device)
                    qualities[p] = (supernet(x, archs[p]).argmax(1) == y).float().mean().item()
                    stats.pass_done()
            world.all_reduce(qualities)
            costs = [problem.cost(arch) for arch in archs]
            path_rewards = [q + self.beta * abs(c / target - 1) for q, c in zip(qualities.tolist(), costs)]
            reward, cost = float(np.mean(path_rewards)), float(np.mean(costs))
            if baseline is None:
                baseline = reward
            if step >= warmup_steps:
                controller.reinforce([(indices, r - baseline) for indices, r in zip(sampled, path_rewards)])
            baseline = self.baseline_momentum * baseline + (1 - self.baseline_momentum) * reward
            rewards.append(reward)
            if step % snapshot_every == 0 or step == self.steps - 1:
                trajectory.append({"step": step, "probs": controller.probs()})
                problem.log_progress(step, {**flat_progress(f"{stage_name}: P ", trajectory[-1]["probs"], options),
                                            f"{stage_name}: reward baseline": baseline})
            bar.update(1)
            bar.set_postfix(stage=stage_name, reward=f"{reward:.3f}", cost=f"{cost:.4g}", refresh=False)
            checkpoint.step_done(step, state)
        best = arch_of(controller.argmax())
        return {"stage": stage_name, "searched": [d.name for d in searched], "arch": best,
                "argmax_arch": dict(best), "argmax_cost": problem.cost(best), "final_probs": controller.probs(),
                "mean_reward_last_10pct": float(np.mean(rewards[-max(1, self.steps // 10):])),
                "trajectory": trajectory}
