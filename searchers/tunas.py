"""TuNAS-style search (Bender et al., 2020) in MobileNetV4's two stages.

One weight-sharing supernet; a controller of independent categorical distributions, one
per searched decision (logits start at zero). Every step trains the shared weights on one
sampled path (on a batch of the weights' share of the training data), then samples
another path, scores it on a batch of the controller's share, and updates the logits by
REINFORCE against an exponential moving average baseline. The reward is the absolute
one, ``quality + beta * |cost / aim - 1|``. For the first ``warmup`` share of a stage's
steps the controller's learning rate is zero, and each decision takes its largest option
(every kernel, width and depth enabled) with a probability that decays from 1 to 0.

``stages=2`` (MobileNetV4): stage 1 searches the ``coarse`` decisions (stage widths and
depths) with every block held at the space's default (an inverted bottleneck, expansion
4, 3x3 depthwise), stage 2 on the stage-1 shape the ones the space's ``two_stage_search()``
names (``uib``: each block's two depthwise layers, absent, 3x3 or 5x5, as MobileNetV4's
fine search), else its ``fine`` ones. ``stages=1`` searches every decision at once with all
its options (the baseline).
Under a run's ``budget``, a stage whose argmax misses it hands the next stage (or the
retraining) that stage's most probable choices within it (:func:`fit_budget`).
The result is the argmax architecture, trained from scratch by the run's evaluator and
priced by its cost model; with a measured LUT, its latency is also measured end to end.

``micro_batches`` (default: one per process) splits each step like TuNAS's cores: the
batch is cut into that many slices, each trained (and, for the controller, rewarded) on
its own sampled path; weight gradients are averaged, the controller's REINFORCE gradient
averages the paths' advantages, and the baseline follows their mean reward. Under
``torchrun`` the processes share the micro-batches (:mod:`nas.training.distributed`), and a run
equals a one-process run with the same ``micro_batches``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from nas import Arch, NASError, Searcher, register_searcher
from nas.costs import format_cost
from nas.ledger import flat_progress
from nas.lut import latency_report
from nas.training.harness import WeightTraining, cosine_lr, set_lr
from nas.training.train import rng_states, set_rng_states


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


#: what stage 2 searches: "mnv4", the space's two_stage_search() (MobileNetV4's fine search)
#: where it has one; "fine", every decision tagged fine with all its options
STAGE2_CHOICES = ("mnv4", "fine")


@register_searcher("tunas")
class TuNAS(Searcher):
    """TuNAS-style search in MobileNetV4's two stages (``stages=1``: the one-stage baseline).
    Reward: quality + ``beta`` * |cost / aim - 1|; the aim: ``aim_cost``, else the
    run's budget, else the median cost of 200 random archs. ``steps`` per stage (each a
    shared-weight and a controller update); ``warmup``: the share of a stage's steps with the
    controller still and all ops warming up; ``controller_share``: the share of the training
    data kept for the controller's rewards; ``checkpoint_every``: steps between checkpoints
    (``run_dir/tunas/state.pt``, also on SIGTERM); ``micro_batches``: slices of each batch, each
    on its own sampled path (TuNAS cores; null: one per torchrun process); ``stage2``: ``mnv4``
    (MobileNetV4's fine search where the space defines it: ``uib``'s depthwise layers) or
    ``fine`` (every ``fine`` decision with all its options: on ``uib`` also kernel 7, the
    expansion and Fused-IB)."""

    requires = ("supernet",)
    distributed = True
    signed_fields = ("beta",)  # the cost penalty's weight is negative

    def __init__(self, stages: int = 2, steps: int = 250, batch_size: int = 64, reward_batch_size: int = 256,
                 warmup: float = 0.25, lr: float = 0.05, momentum: float = 0.9, weight_decay: float = 4e-5,
                 controller_lr: float = 0.1, baseline_momentum: float = 0.95, beta: float = -0.1,
                 aim_cost: float | None = None, controller_share: float = 0.2, measure_latency: bool = True,
                 device: str = "auto", checkpoint_every: int = 50, micro_batches: int | None = None,
                 stage2: str = "mnv4"):
        if stage2 not in STAGE2_CHOICES:
            raise NASError(f"searcher.stage2 must be one of {', '.join(map(repr, STAGE2_CHOICES))}, got {stage2!r}")
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
            raise NASError(f"searcher.beta must be <= 0 (a penalty for missing the aim), got {beta}")
        if aim_cost is not None and not aim_cost > 0:
            raise NASError(f"searcher.aim_cost must be > 0, got {aim_cost}")
        self.stages, self.steps, self.batch_size, self.reward_batch_size = stages, steps, batch_size, reward_batch_size
        self.warmup, self.lr, self.momentum, self.weight_decay = warmup, lr, momentum, weight_decay
        self.controller_lr, self.baseline_momentum, self.beta = controller_lr, baseline_momentum, beta
        self.aim_cost, self.controller_share = aim_cost, controller_share
        self.measure_latency, self.device = measure_latency, device
        if checkpoint_every < 1:
            raise NASError(f"searcher.checkpoint_every must be >= 1, got {checkpoint_every}")
        self.checkpoint_every, self.micro_batches = checkpoint_every, micro_batches
        self.stage2 = stage2

    # ------------------------------------------------------------------ setup
    def resolve_aim(self, problem) -> tuple[float, str]:
        """The cost the search aims at: ``aim_cost``, else the run's budget, else the
        median cost of 200 random archs of the space."""
        if self.aim_cost is not None:
            return float(self.aim_cost), "searcher.aim_cost"
        if problem.budget is not None:
            return float(problem.budget), "budget"
        rng = np.random.default_rng(problem.seed)
        costs = [problem.cost(problem.space.sample(rng)) for _ in range(200)]
        return float(np.median(costs)), "median of 200 random archs"

    def plan(self, space) -> list[tuple[str, list]]:
        """(stage name, the decisions it searches, with the options it searches). Two stages:
        with ``stage2="mnv4"`` the space's own ``two_stage_search()`` where it has one
        (``uib``: MobileNetV4's), else its ``coarse`` then its ``fine`` decisions."""
        if self.stages == 1:
            return [("one-stage", space.decisions())]
        if self.stage2 == "mnv4" and hasattr(space, "two_stage_search"):
            return space.two_stage_search()
        for tag in ("coarse", "fine"):
            if not space.decisions(tag):
                raise NASError(f"two-stage tunas needs 'coarse' and 'fine' decisions; space {space.name!r} "
                               f"has no {tag!r} ones (use searcher.stages=1)")
        return [("stage1-coarse", space.decisions("coarse")), ("stage2-fine", space.decisions("fine"))]

    # ------------------------------------------------------------------ search
    def train_supernet(self, problem) -> tuple:
        """The search's training: the supernet's shared weights and each stage's controller
        (resumed from the run's checkpoint if any). Returns ``(held, stage_reports, supernet,
        aim, aim_from)``: the last stage's argmax (fitted to the budget stage by stage), the
        stages' reports and the trained supernet."""
        space = problem.space
        aim, aim_from = self.resolve_aim(problem)
        training = WeightTraining(problem, self, "trains a supernet",
                                  {"batch_size": (self.batch_size, 2), "reward_batch_size": (self.reward_batch_size, 1)},
                                  {"space": space.config(), "aim": aim})
        torch.manual_seed(problem.seed)
        supernet = space.supernet().to(device=training.device, memory_format=torch.channels_last)
        gen = torch.Generator().manual_seed(problem.seed)
        rng = np.random.default_rng(problem.seed)
        # TuNAS's split: the shared weights and the controller learn on different examples
        perm = torch.randperm(len(training.data.train), generator=gen)
        n_ctrl = max(1, int(len(training.data.train) * self.controller_share))
        pools = {"weights": perm[n_ctrl:], "controller": perm[:n_ctrl]}
        held, stage_reports = self._train_stages(SupernetRun(training, supernet, pools, aim, gen, rng))
        return held, stage_reports, supernet, aim, aim_from

    def search(self, problem):
        space = problem.space
        held, stage_reports, _, aim, aim_from = self.train_supernet(problem)
        if not problem.world.is_main:
            return None  # the search is trained; rank 0 evaluates and reports its result
        final = space.canonicalize(held)
        extras = {}
        if problem.budget is not None and not problem.within_budget(problem.cost(final)):
            # the last stage's choices could not reach the budget alone: every searched decision may change
            probs = {name: p for report in stage_reports for name, p in report["final_probs"].items()}
            options = {d.name: d.options for _, searched in self.plan(space) for d in searched}
            final, extras["budget_repair"] = fit_budget(problem, final, probs, options)
        repairs = [(r["stage"], r["budget_repair"]) for r in stage_reports if "budget_repair" in r]
        repairs += [("all stages", extras["budget_repair"])] if "budget_repair" in extras else []
        if repairs:
            extras["report"] = [repair_line(problem, stage, repair) for stage, repair in repairs]
        evaluation = problem.evaluate(final)
        extras.update({"aim_cost": aim, "aim_from": aim_from, "stages": stage_reports,
                       "cost_error": (evaluation.cost - aim) / aim})
        if self.measure_latency:
            extras.update(latency_report(problem, final))
        return problem.result(**extras)

    def _train_stages(self, run: SupernetRun) -> tuple[Arch, list[dict]]:
        """Every stage in turn, each from the previous one's argmax (resumed where a
        checkpoint of the same search stopped); the last argmax and the stages' reports."""
        training, space = run.training, run.training.problem.space
        held, stage_reports, first_stage = space.default_arch(), [], 0
        resumed = training.checkpoint.load()
        if resumed is not None:
            first_stage, held, stage_reports = resumed["stage"], Arch(resumed["held"]), resumed["stage_reports"]
            run.supernet.load_state_dict(resumed["supernet"])
        bar = training.progress_bar(self.steps * self.stages, initial=first_stage * self.steps)
        try:
            with training.checkpoint:
                for i, (stage_name, searched) in enumerate(self.plan(space)):
                    if i < first_stage:
                        continue
                    stage = Stage(self, run, stage_name, searched, held,
                                  {"stage": i, "held": dict(held), "stage_reports": stage_reports})
                    report = stage.run(bar, resumed if i == first_stage else None)
                    held = report.pop("arch")
                    problem = training.problem
                    if problem.budget is not None and not problem.within_budget(problem.cost(held)):
                        # The reward only aims at the budget, so an argmax lands over it about as
                        # often as under; the next stage (and the retraining) then start from the
                        # controller's most probable choices of this stage within it.
                        held, report["budget_repair"] = fit_budget(
                            problem, held, report["final_probs"], {d.name: d.options for d in searched})
                    stage_reports.append(report)
        finally:
            bar.close()
        return held, stage_reports


def fit_budget(problem, arch: Arch, probs: dict, options: dict) -> tuple[Arch, dict]:
    """:func:`most_probable_within` and its record: the argmax's cost, the cost after, and
    each changed decision's [before, after]."""
    fitted = most_probable_within(problem, arch, probs, options)
    return fitted, {"argmax_cost": problem.cost(arch), "cost": problem.cost(fitted),
                    "changed": {n: [arch[n], fitted[n]] for n in arch if arch[n] != fitted[n]}}


def repair_line(problem, stage: str | None, repair: dict, what: str = "the controller's argmax") -> str:
    """What a budget repair of ``what`` (in ``stage``, if any) did, as the run prints it."""
    unit = problem.cost_model.unit
    return (f"{stage + ': ' if stage else ''}{what} costs {format_cost(repair['argmax_cost'], unit)}, over the "
            f"budget; {len(repair['changed'])} decisions changed to its most probable choices within it "
            f"({format_cost(repair['cost'], unit)})")


def most_probable_within(problem, arch: Arch, probs: dict[str, list[float]], options: dict[str, tuple]) -> Arch:
    """From ``arch`` (over the run's budget), an architecture within it that the controller's
    distributions ``probs`` (decision -> probabilities of its searched ``options``) still favour. While over the
    budget: the change of one decision that loses the least log-probability, among changes
    that reach the budget, else per unit of cost saved. Then, within it: the change that
    gains the most log-probability and stays within, while one does (undoing cuts that went
    further than needed). ``arch`` itself when no change lowers the cost any further (the
    run then rejects it as over the budget)."""
    space = problem.space
    log_p = {name: np.log(np.maximum(p, 1e-12)) for name, p in probs.items()}

    def total(a: Arch) -> float:  # over every searched decision: a change may canonicalize others
        return sum(log_p[n][values.index(a[n])] for n, values in options.items() if a[n] in values)

    def changes(current: Arch):
        """(log-probability gained, cost, arch) of every change of one searched decision."""
        here = total(current)
        for name, values in options.items():
            for value in values:
                if value != current[name]:
                    candidate = space.canonicalize(current.replace(**{name: value}))
                    yield total(candidate) - here, problem.cost(candidate), candidate

    current, cost = arch, problem.cost(arch)
    while not problem.within_budget(cost):
        # (misses the budget, log-probability lost: in all or per cost saved, tie-break, arch, cost)
        moves = [(not problem.within_budget(c), -gain if problem.within_budget(c) else -gain / (cost - c), a.key(), a, c)
                 for gain, c, a in changes(current) if c < cost]
        if not moves:
            return arch
        *_, current, cost = min(moves, key=lambda m: m[:3])
    while True:
        ups = [(gain, a.key(), a, c) for gain, c, a in changes(current) if gain > 1e-12 and problem.within_budget(c)]
        if not ups:
            return current
        *_, current, cost = max(ups, key=lambda m: (m[0], m[1]))


@dataclass
class SupernetRun:
    """What the stages of one search share: the harness, the supernet, the examples of the
    shared weights and of the controller, the cost aimed at and the random streams."""

    training: WeightTraining
    supernet: torch.nn.Module
    pools: dict
    aim: float
    gen: torch.Generator
    rng: np.random.Generator


class Stage:
    """One TuNAS stage: a controller over the ``searched`` decisions (the others held at
    ``held``), trained with the shared weights step by step."""

    def __init__(self, tunas: TuNAS, run: SupernetRun, name: str, searched, held: Arch, position: dict):
        self.tunas, self.name, self.searched, self.held = tunas, name, searched, held
        self.supernet, self.training, self.pools, self.aim = run.supernet, run.training, run.pools, run.aim
        self.gen, self.rng = run.gen, run.rng
        self.position = position  # where this stage is in the search, for its checkpoints
        self.problem = run.training.problem
        self.controller = Controller(searched, tunas.controller_lr)
        self.optimizer = run.supernet.optimizer(tunas.lr, tunas.momentum, tunas.weight_decay)
        self.warmup_steps = int(tunas.warmup * tunas.steps)
        # warm-up enables the largest option of numeric decisions (TuNAS's "filter warm-up")
        self.largest = {d.name: max(range(len(d.options)), key=lambda i, d=d: d.options[i]) for d in searched
                        if all(isinstance(o, (int, float)) and not isinstance(o, bool) for o in d.options)}
        self.baseline, self.rewards, self.trajectory = None, [], []

    def run(self, bar, resumed: dict | None) -> dict:
        first_step = self.load(resumed) if resumed is not None else 0
        bar.update(first_step)
        for step in range(first_step, self.tunas.steps):
            self.weight_step(step)
            reward, cost = self.controller_step(step)
            self.snapshot(step)
            bar.update(1)
            bar.set_postfix(stage=self.name, reward=f"{reward:.3f}", cost=f"{cost:.4g}", refresh=False)
            self.training.checkpoint.step_done(step, lambda step=step: self.state(step))
        return self.report()

    def arch_of(self, indices: dict[str, int]) -> Arch:
        return self.problem.space.canonicalize(self.held.replace(**self.controller.values(indices)))

    def weight_step(self, step: int) -> None:
        """The shared weights on a path per micro-batch (every process draws them all)."""
        tunas, training = self.tunas, self.training
        set_lr(self.optimizer, cosine_lr(tunas.lr, step, tunas.steps))
        sampled = []
        for _ in range(training.n_micro):
            indices = self.controller.sample(self.gen)
            if step < self.warmup_steps:
                enable_all = 1.0 - step / self.warmup_steps
                for name, i in self.largest.items():
                    if self.rng.random() < enable_all:
                        indices[name] = i
            sampled.append(indices)
        archs = [self.arch_of(indices) for indices in sampled]
        batch = training.batches(self.pools["weights"], tunas.batch_size, self.gen)
        self.supernet.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss = training.step(self.supernet, [self.optimizer], batch, tunas.batch_size,
                             lambda p, x, y: F.cross_entropy(self.supernet(x, archs[p]), y))
        if not math.isfinite(loss):
            raise NASError(f"supernet training diverged at {self.name} step {step}; lower searcher.lr")
        self.optimizer.step()

    def controller_step(self, step: int) -> tuple[float, float]:
        """REINFORCE on other paths and a separate batch: reward = accuracy with the shared
        weights + beta * |cost / aim - 1| (the absolute reward); returns the mean reward and cost."""
        tunas, training = self.tunas, self.training
        sampled = [self.controller.sample(self.gen) for _ in range(training.n_micro)]
        archs = [self.arch_of(indices) for indices in sampled]
        batch = training.batches(self.pools["controller"], tunas.reward_batch_size, self.gen)
        qualities = training.measure(self.supernet, batch,
                                     lambda p, x, y: (self.supernet(x, archs[p]).argmax(1) == y).float().mean().item())
        costs = [self.problem.cost(arch) for arch in archs]
        path_rewards = [q + tunas.beta * abs(c / self.aim - 1) for q, c in zip(qualities, costs)]
        reward, cost = float(np.mean(path_rewards)), float(np.mean(costs))
        if self.baseline is None:
            self.baseline = reward
        if step >= self.warmup_steps:
            self.controller.reinforce([(indices, r - self.baseline) for indices, r in zip(sampled, path_rewards)])
        self.baseline = tunas.baseline_momentum * self.baseline + (1 - tunas.baseline_momentum) * reward
        self.rewards.append(reward)
        return reward, cost

    def snapshot(self, step: int) -> None:
        """The controller's probabilities about ten times a stage (trajectory and dashboard)."""
        steps = self.tunas.steps
        if step % max(1, steps // 10) == 0 or step == steps - 1:
            self.trajectory.append({"step": step, "probs": self.controller.probs()})
            options = {d.name: d.options for d in self.searched}
            self.problem.log_progress(step, {**flat_progress(f"{self.name}: P ", self.trajectory[-1]["probs"], options),
                                             f"{self.name}: reward baseline": self.baseline})

    def state(self, step: int) -> dict:
        """Everything a resumed run needs to continue after ``step`` as an uninterrupted one."""
        return {**self.position, "step": step + 1, "supernet": self.supernet.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "controller": {n: v.detach().clone() for n, v in self.controller.logits.items()},
                "controller_optimizer": self.controller.optimizer.state_dict(), "baseline": self.baseline,
                "rewards": self.rewards, "trajectory": self.trajectory, "rng": rng_states(self.gen, self.rng)}

    def load(self, resumed: dict) -> int:
        """Continue from a checkpoint's :meth:`state`; returns the step to continue at."""
        self.baseline = resumed["baseline"]
        self.rewards, self.trajectory = list(resumed["rewards"]), list(resumed["trajectory"])
        for name, logits in self.controller.logits.items():
            logits.data.copy_(resumed["controller"][name])
        self.controller.optimizer.load_state_dict(resumed["controller_optimizer"])
        self.optimizer.load_state_dict(resumed["optimizer"])
        set_rng_states(resumed["rng"], self.gen, self.rng)
        return resumed["step"]

    def report(self) -> dict:
        best = self.arch_of(self.controller.argmax())
        steps = self.tunas.steps
        return {"stage": self.name, "searched": [d.name for d in self.searched], "arch": best,
                "argmax_arch": dict(best), "argmax_cost": self.problem.cost(best),
                "final_probs": self.controller.probs(),
                "mean_reward_last_10pct": float(np.mean(self.rewards[-max(1, steps // 10):])),
                "trajectory": self.trajectory}
