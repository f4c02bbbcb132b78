"""HANT's operation selection as an integer linear program (Eq. 3 of the HANT paper).

One op per layer, the sum of the chosen ops' costs (latency from a LUT, MACs, ...) within
a budget, the sum of their scores (the estimated change of the teacher's loss) minimal;
and K diverse solutions, the k-th sharing at most ``overlap`` layers' ops with every
earlier one. The model is written with PuLP and solved by the CBC solver PuLP ships, or
by HiGHS when ``highspy`` is installed.

Solving the full model K times is slow: each overlap constraint makes the next solve
harder (with CBC, 100 solutions of a 46 x 197 instance take far beyond 15 minutes). The
problem is a multiple-choice knapsack with side constraints, and its LP relaxation is
tight, so each solution is found by *reduced-cost fixing* instead:

1. Solve the LP relaxation (HiGHS through ``scipy.optimize.linprog``): bound ``LP*`` and
   the reduced cost ``r`` of every (layer, op) variable. For any integer solution that
   picks variable v, ``objective >= LP* + r_v`` (LP duality).
2. Solve the ILP with PuLP over the variables with ``r_v <= tau`` only (a few per layer)
   until the solver's branch and bound proves its solution ``z`` within ``gap`` of the
   restricted optimum. If ``z <= LP* + tau``, no solution using an excluded variable is
   better than ``z``, so ``z`` is within ``gap`` of the optimum of the full ILP. Otherwise
   ``tau = z - LP*`` and one more restricted solve is proven the same way.

Every solution carries its proof (:class:`Selection`: the bound and the gap). The bound
of a restricted solve is HiGHS's dual bound; CBC does not report one, so with CBC it is
the one its stopping rule guarantees.
"""

from __future__ import annotations

import copy
import dataclasses
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pulp
import torch

from nas import NASError, Score, Searcher, register_searcher
from nas.costs import format_cost
from nas.lut import describe_latency, latency_report

SOLVERS = ("auto", "cbc", "highs")


def pulp_solver(name: str = "auto", gap: float = 1e-3):
    """The PuLP solver ``name`` names: ``cbc`` (shipped with PuLP), ``highs`` (needs
    ``highspy``), ``auto`` (HiGHS when installed, else CBC). Each solve runs, without a
    time limit, until its branch and bound proves the solution within ``gap`` (relative)
    of the optimum."""
    if name not in SOLVERS:
        raise NASError(f"unknown ILP solver {name!r}; accepted: {', '.join(map(repr, SOLVERS))}")
    highs = pulp.HiGHS(msg=False, gapRel=gap)
    if name == "highs" or (name == "auto" and highs.available()):
        if not highs.available():
            raise NASError("ILP solver 'highs' needs the highspy package (pip install highspy); or use solver=cbc")
        return highs
    with warnings.catch_warnings():
        # PuLP 3.3 deprecates the CBC it bundles in favour of a separate package; it is
        # still the solver every PuLP install has.
        warnings.simplefilter("ignore", DeprecationWarning)
        return pulp.PULP_CBC_CMD(msg=False, gapRel=gap)


@dataclass
class Selection:
    """One solution: the op index chosen per layer, its objective and cost, and the proof
    of its quality: ``bound`` is a proven lower bound on the optimum of its ILP (from the
    LP relaxation, the reduced-cost threshold and the solver's branch and bound), so the
    solution is within ``gap`` (relative) of the optimum."""

    choice: list[int]
    objective: float
    cost: float
    bound: float
    lp_bound: float
    threshold: float
    variables: int
    seconds: float

    @property
    def gap(self) -> float:
        return (self.objective - self.bound) / max(abs(self.objective), 1e-12)


class Instance:
    """Scores and costs of every op of every layer (layers may have pools of different
    sizes), flattened into one vector of variables."""

    def __init__(self, scores, costs):
        if len(scores) != len(costs) or not len(scores):
            raise NASError(f"the ILP needs scores and costs for the same layers (got {len(scores)} and {len(costs)})")
        self.scores = [np.asarray(s, dtype=float) for s in scores]
        self.costs = [np.asarray(c, dtype=float) for c in costs]
        for i, (s, c) in enumerate(zip(self.scores, self.costs)):
            if s.ndim != 1 or s.shape != c.shape or not len(s):
                raise NASError(f"layer {i}: scores and costs must be equal-length non-empty vectors")
            if not (np.isfinite(s).all() and np.isfinite(c).all()):
                raise NASError(f"layer {i}: scores and costs must be finite numbers")
        self.sizes = [len(s) for s in self.scores]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)])
        self.a = np.concatenate(self.scores)
        self.b = np.concatenate(self.costs)
        self.layer_of = np.repeat(np.arange(len(self.sizes)), self.sizes)

    @property
    def n_layers(self) -> int:
        return len(self.sizes)

    def min_cost(self) -> float:
        return float(sum(c.min() for c in self.costs))

    def variables(self, choice) -> np.ndarray:
        return self.offsets[:-1] + np.asarray(choice)


def _undominated(inst: Instance, previous: list[np.ndarray]) -> np.ndarray:
    """The variables an optimal solution may need. In a layer, every op that no earlier
    solution chose there counts the same in every overlap constraint, so among those only
    the Pareto front of (score, cost) can be optimal; ops earlier solutions chose are kept."""
    allowed = np.zeros(len(inst.a), dtype=bool)
    used = np.zeros(len(inst.a), dtype=bool)
    for p in previous:
        used[p] = True
    for i in range(inst.n_layers):
        lo, hi = inst.offsets[i], inst.offsets[i + 1]
        free = np.flatnonzero(~used[lo:hi]) + lo
        best = np.inf
        for v in free[np.lexsort((inst.a[free], inst.b[free]))]:  # by cost, then score
            if inst.a[v] < best:
                allowed[v] = True
                best = inst.a[v]
    return allowed | used


def _lp(inst: Instance, budget: float, previous: list[np.ndarray], overlap: int, allowed: np.ndarray):
    """LP relaxation over the ``allowed`` variables: (bound, reduced costs), or None when
    infeasible."""
    # imported here: scipy.optimize takes a third of a second, and every command loads this plug-in
    import scipy.optimize
    import scipy.sparse

    n, n_layers = len(inst.a), inst.n_layers
    a_eq = scipy.sparse.csr_matrix((np.ones(n), (inst.layer_of, np.arange(n))), shape=(n_layers, n))
    rows = [inst.b[None, :]]
    for p in previous:
        row = np.zeros((1, n))
        row[0, p] = 1.0
        rows.append(row)
    a_ub = scipy.sparse.csr_matrix(np.vstack(rows))
    b_ub = np.array([budget] + [overlap] * len(previous), dtype=float)
    bounds = np.column_stack([np.zeros(n), np.where(allowed, np.inf, 0.0)])
    res = scipy.optimize.linprog(inst.a, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=np.ones(n_layers), bounds=bounds,
                                 method="highs")
    if res.status == 2:
        return None
    if res.status != 0:
        raise NASError(f"the ILP's LP relaxation failed: {res.message}")
    return float(res.fun), np.maximum(res.lower.marginals, 0.0)


def _restricted_ilp(inst: Instance, keep: np.ndarray, budget: float, previous: list[np.ndarray], overlap: int,
                    solver, gap: float) -> tuple[float, np.ndarray, float] | None:
    """Eq. 3 over the variables ``keep`` only, with PuLP: (objective, chosen variables,
    proven lower bound on this restricted ILP's optimum), or None when infeasible."""
    prob = pulp.LpProblem("hant_selection", pulp.LpMinimize)
    x = {int(v): prob.add_variable(f"x{int(v)}", cat="Binary") for v in keep}
    prob += pulp.lpSum(inst.a[v] * x[v] for v in x)
    prob += pulp.lpSum(inst.b[v] * x[v] for v in x) <= budget, "budget"
    by_layer: dict[int, list[int]] = {}
    for v in x:
        by_layer.setdefault(int(inst.layer_of[v]), []).append(v)
    for layer in range(inst.n_layers):
        prob += pulp.lpSum(x[v] for v in by_layer.get(layer, [])) == 1, f"one_op_{layer}"
    for k, p in enumerate(previous):
        shared = [x[int(v)] for v in p if int(v) in x]
        if len(shared) > overlap:
            prob += pulp.lpSum(shared) <= overlap, f"overlap_{k}"
    status = pulp.LpStatus[prob.solve(solver)]
    if status not in ("Optimal", "Infeasible") and isinstance(solver, pulp.HiGHS):
        # HiGHS 1.x occasionally ends a small model in "solve error"; CBC then decides it.
        solver = pulp_solver("cbc", gap)
        status = pulp.LpStatus[prob.solve(solver)]
    if status == "Infeasible":
        return None
    if status != "Optimal":
        raise NASError(f"the ILP solver ended with status {status!r}")
    chosen = np.array(sorted(v for v in x if x[v].value() > 0.5))
    objective = float(inst.a[chosen].sum())
    if isinstance(solver, pulp.HiGHS):
        bound = float(prob.solverModel.getInfo().mip_dual_bound)
    else:  # CBC stops once its own bound is within gapRel of its best solution
        bound = objective - gap * abs(objective)
    return objective, chosen, min(bound, objective)


def select_ops(scores, costs, budget: float, k: int = 1, overlap: int | None = None, solver: str = "auto",
               gap: float = 1e-3, on_solution=None) -> list[Selection]:
    """Up to ``k`` solutions of Eq. 3, in order, each proven within ``gap`` (relative) of
    the optimum of its ILP (the budget, one op per layer, at most ``overlap`` layers in
    common with every earlier solution; default ``floor(0.7 * layers)``). Fewer are
    returned when no further solution exists.

    ``scores[i][j]`` and ``costs[i][j]`` belong to op j of layer i. NASError, naming the
    smallest achievable cost, when no selection fits the budget.
    """
    inst = Instance(scores, costs)
    if k < 1:
        raise NASError(f"the ILP needs k >= 1 solutions, got {k}")
    if not 0 <= gap < 1:
        raise NASError(f"the ILP's relative gap must be in [0, 1), got {gap}")
    overlap = int(0.7 * inst.n_layers) if overlap is None else int(overlap)
    if not 0 <= overlap <= inst.n_layers:
        raise NASError(f"the overlap limit must be between 0 and the number of layers ({inst.n_layers}), got {overlap}")
    if budget < inst.min_cost() - 1e-12:
        raise NASError(f"budget {budget:g} is infeasible: the smallest achievable cost is {inst.min_cost():g} "
                       "(the cheapest op of every layer)")
    backend = pulp_solver(solver, gap)
    previous: list[np.ndarray] = []
    out: list[Selection] = []
    for _ in range(k):
        start = time.perf_counter()
        allowed = _undominated(inst, previous)
        lp = _lp(inst, budget, previous, overlap, allowed)
        if lp is None:
            break  # no selection differs enough from the earlier ones within the budget
        lp_bound, reduced = lp
        # Start with the LP's support and each layer's few next-best ops.
        reduced = np.where(allowed, reduced, np.inf)
        per_layer = [np.sort(reduced[inst.offsets[i]:inst.offsets[i + 1]]) for i in range(inst.n_layers)]
        tau = float(np.median([r[min(2, int(np.isfinite(r).sum()) - 1)] for r in per_layer]))
        while True:
            keep = np.flatnonzero(reduced <= tau + 1e-9)
            found = _restricted_ilp(inst, keep, budget, previous, overlap, backend, gap)
            if found is None:  # infeasible with these variables: admit more
                if len(keep) == int(allowed.sum()):
                    break
                tau = 2 * tau + 1e-6
                continue
            if found[0] <= lp_bound + tau + 1e-9 * max(1.0, abs(found[0])):
                break  # every solution using an excluded variable costs at least lp_bound + tau
            tau = found[0] - lp_bound
        if found is None:
            break
        objective, chosen, restricted_bound = found
        # The optimum either uses only kept variables (>= restricted_bound) or not (>= lp_bound + tau).
        bound = max(lp_bound, min(restricted_bound, lp_bound + tau))
        choice = (chosen - inst.offsets[inst.layer_of[chosen]]).tolist()
        previous.append(chosen)
        selection = Selection(choice, objective, float(inst.b[chosen].sum()), bound, lp_bound, tau, len(keep),
                              time.perf_counter() - start)
        out.append(selection)
        if on_solution is not None:
            on_solution(selection)
    return out


# --------------------------------------------------------------------------- the searcher


@register_searcher("ilp")
class ILPSearch(Searcher):
    """HANT on any ``layerwise`` space (:mod:`nas.training.layerwise`):

    1. the teacher: weights from ``teacher_weights`` (a run's ``model.pt`` of the teacher
       arch), else trained here for ``teacher_epochs`` with the evaluator's settings;
    2. candidates: with ``prefilter`` only those no costlier than the teacher's layer (the
       paper's pool prefiltering); with ``zero_shot`` only the teacher's layers and
       parameter-free identities, and no pretraining; otherwise all candidates pretrained
       by layer-wise distillation (:func:`nas.training.layerwise.distill`, checkpointed in the run
       directory, resumed on a re-run);
    3. scores: the change of the teacher's loss on ``held_out`` training examples (kept
       out of every training) when one layer is swapped;
    4. ``k`` diverse selections by :func:`select_ops` under the budget (the run's
       ``budget``, else ``budget_ratio`` times the teacher's cost, which then becomes the
       run's budget);
    5. each selection with its pretrained ops ranked by its loss on the held-out examples;
       the best fine-tuned for ``finetune_epochs`` with distillation from the teacher, and
       recorded (with the teacher) in the ledger with its validation accuracy.
    """

    requires = ("layerwise",)
    needs_layer_costs = True  # the ILP sums each layer's cost
    distributed = True  # pretraining (step 2) is shared by torchrun's processes

    def __init__(self, k: int = 10, overlap: int | None = None, solver: str = "auto", gap: float = 1e-3,
                 budget_ratio: float = 0.6, zero_shot: bool = False, prefilter: bool = True,
                 teacher_weights: str | None = None, teacher_epochs: int = 4, pretrain_epochs: int = 1,
                 pretrain_batches: int | None = None, pretrain_lr: float = 2e-3, batch_size: int = 64,
                 held_out: int = 512, checkpoint_every: int = 20, finetune_epochs: int = 2,
                 distill_weight: float = 1.0, temperature: float = 1.0, measure_latency: bool = True,
                 device: str = "auto", micro_batches: int | None = None):
        if k < 1:
            raise NASError(f"searcher.k must be >= 1, got {k}")
        if solver not in SOLVERS:
            raise NASError(f"unknown searcher.solver {solver!r}; accepted: {', '.join(map(repr, SOLVERS))}")
        if not 0 <= gap < 1:
            raise NASError(f"searcher.gap must be in [0, 1), got {gap}")
        if not 0 < budget_ratio:
            raise NASError(f"searcher.budget_ratio must be > 0, got {budget_ratio}")
        for field, value in (("teacher_epochs", teacher_epochs), ("finetune_epochs", finetune_epochs)):
            if value < 0:
                raise NASError(f"searcher.{field} must be >= 0, got {value}")
        if pretrain_epochs < 1 or batch_size < 2 or pretrain_lr <= 0 or checkpoint_every < 1:
            raise NASError("searcher.pretrain_epochs, batch_size, pretrain_lr and checkpoint_every must be positive "
                           f"(batch_size >= 2), got {pretrain_epochs}, {batch_size}, {pretrain_lr}, {checkpoint_every}")
        if pretrain_batches is not None and pretrain_batches < 1:
            raise NASError(f"searcher.pretrain_batches must be >= 1 or null, got {pretrain_batches}")
        self.k, self.overlap, self.solver, self.gap, self.budget_ratio = k, overlap, solver, gap, budget_ratio
        self.zero_shot, self.prefilter, self.teacher_weights = zero_shot, prefilter, teacher_weights
        self.teacher_epochs, self.pretrain_epochs, self.pretrain_batches = teacher_epochs, pretrain_epochs, pretrain_batches
        self.pretrain_lr, self.batch_size, self.held_out = pretrain_lr, batch_size, held_out
        self.checkpoint_every, self.finetune_epochs = checkpoint_every, finetune_epochs
        self.distill_weight, self.temperature = distill_weight, temperature
        self.measure_latency, self.device, self.micro_batches = measure_latency, device, micro_batches

    # ------------------------------------------------------------------ the algorithm
    def default_budget(self, space, cost_model) -> float:
        """``budget_ratio`` times the teacher's cost: the run's budget when it gives none (the
        ledger judges feasibility by it, so the result and model.pt are the accelerated
        network, not the teacher)."""
        return self.budget_ratio * cost_model.cost(space.ops(self.teacher_arch(space)))

    @staticmethod
    def teacher_arch(space):
        return space.validate({d.name: space.reference_option for d in space.decisions()})

    def search(self, problem):
        from nas.training.layerwise import LayerwiseNet

        data, recipe = problem.training(f"searcher {self.name!r}", "trains the teacher and its candidates")
        run = HANTRun(self, problem, data, recipe)
        torch.manual_seed(problem.seed)
        run.net = LayerwiseNet(problem.space)
        run.hold_out()
        teacher = self.train_teacher(run)                                    # 1. the teacher
        options, costs, fixed = self.candidates(run)                         # 2. candidates and their costs
        self.pretrain(run, options)
        if not problem.world.is_main:
            return None  # the candidates are trained; rank 0 scores, selects and fine-tunes
        base_loss, scores = self.scores(run, options)                        # 3. scores
        selections = self.select(run, scores, costs, fixed)                  # 4. K diverse selections
        ranked = self.rank(run, options, selections, fixed)                  # 5. rank, fine-tune the best
        found = self.fine_tune(run, ranked)
        extras = {"teacher": teacher, "budget_used": problem.budget, "candidates_searched": sum(map(len, options)),
                  "teacher_loss": base_loss, "selections": ranked["candidates"],
                  "chosen_solution": ranked["best"] + 1}
        extras["report"] = self.report_lines(run, extras, selections, found)
        if self.measure_latency:
            for who, arch in (("teacher", self.teacher_arch(problem.space)), ("found", ranked["arch"])):
                report = latency_report(problem, arch)
                if "measured_latency_ms" in report:
                    extras[f"{who}_latency"] = report
                    extras["report"].append(describe_latency(report, f"the {who}"))
        return problem.result(**extras)

    # ------------------------------------------------------------------ steps
    def train_teacher(self, run) -> dict:
        """The teacher's weights (given, kept from an earlier run, or trained here; under
        torchrun rank 0's, handed to the others), recorded in the ledger with its accuracy."""
        from nas.training.train import accuracy

        problem, net, world = run.problem, run.net, run.problem.world
        source = self.teacher_weights_from(run) if world.is_main else None
        if world.size > 1:
            source, state = world.broadcast((source, net.teacher.state_dict() if world.is_main else None))
            net.teacher.load_state_dict(state)
        net.to(device=run.device, memory_format=torch.channels_last)
        arch = self.teacher_arch(problem.space)
        teacher = {"accuracy": None, "cost": problem.cost(arch), "weights": source}
        if world.is_main:
            acc, _ = accuracy(net.teacher, run.data, run.data.val, problem.space.input_shape, 512, run.device)
            model = copy.deepcopy(net.teacher).cpu()
            problem.evaluate(arch, lambda s, a: Score(acc, {"accuracy": acc}, model))
            teacher["accuracy"] = acc
        return teacher

    def teacher_weights_from(self, run) -> str:
        """Load or train the teacher; says where its weights came from."""
        from nas.export import save_atomic
        from nas.training.train import train

        problem, net = run.problem, run.net
        path = Path(self.teacher_weights).expanduser() if self.teacher_weights else None
        if path is None and run.work is not None and (run.work / "teacher.pt").exists():
            path = run.work / "teacher.pt"
        if path is not None:
            if not path.is_file():
                raise NASError(f"searcher.teacher_weights {str(path)!r} does not exist")
            saved = torch.load(path, map_location="cpu", weights_only=True)
            state = saved.get("state_dict", saved) if isinstance(saved, dict) else saved
            try:
                net.teacher.load_state_dict(state)
            except RuntimeError as exc:
                raise NASError(f"searcher.teacher_weights {str(path)!r} does not fit the teacher of space "
                               f"{problem.space.name!r}: {str(exc).splitlines()[0]}") from None
            return str(path)
        train(net.teacher, run.train_data, problem.space.input_shape, run.recipe_for(self.teacher_epochs),
              problem.seed)
        if run.work is not None:
            save_atomic({"state_dict": net.teacher.state_dict()}, run.work / "teacher.pt")
        return f"trained here for {self.teacher_epochs} epochs"

    def candidates(self, run) -> tuple[list[list], list[np.ndarray], float]:
        """Per layer the candidates searched and their costs, and the cost of the fixed
        layers; a budget that no selection can meet is refused here."""
        problem, cost_model = run.problem, run.problem.cost_model
        options, costs = self._options(problem.space, cost_model)
        fixed = cost_model.cost(problem.space.fixed_ops())
        cheapest = fixed + sum(float(c.min()) for c in costs)
        budget = problem.budget
        if budget < cheapest - 1e-12:
            restricted = " with zero_shot (teacher and parameter-free identity ops only)" if self.zero_shot else ""
            unit = cost_model.unit
            raise NASError(f"budget {format_cost(budget, unit)} ({budget:g}) is infeasible{restricted}: the smallest "
                           f"achievable cost is {format_cost(cheapest, unit)} ({cheapest:g})")
        return options, costs, fixed

    def _options(self, space, cost_model) -> tuple[list[list], list[np.ndarray]]:
        options, costs = [], []
        for i, d in enumerate(space.layer_decisions()):
            teacher_cost = sum(cost_model.op_cost(op) for op in space.layer_ops(i, space.reference_option))
            opts, layer_costs = [], []
            for option in d.options:
                if self.zero_shot and not space.parameter_free(i, option):
                    continue
                c = sum(cost_model.op_cost(op) for op in space.layer_ops(i, option))
                if self.prefilter and not self.zero_shot and c > teacher_cost and option != space.reference_option:
                    continue
                opts.append(option)
                layer_costs.append(c)
            options.append(opts)
            costs.append(np.array(layer_costs))
        return options, costs

    def pretrain(self, run, options) -> None:
        """Every candidate trained by layer-wise distillation from the teacher (Eq. 2;
        not with ``zero_shot``), the per-layer mean MSE logged every 10 steps."""
        from nas.training.layerwise import DistillSettings, distill

        problem = run.problem
        if self.zero_shot:
            run.net.add_candidates(options)
            return

        def log_pretraining(step, mse):
            if step % 10 == 0:
                per_layer = {}
                for key, value in mse.items():
                    per_layer.setdefault(int(key.split(":", 1)[0]) + 1, []).append(value)
                problem.log_progress(step, {f"pretraining: mean MSE layer {layer}": float(np.mean(values))
                                            for layer, values in per_layer.items()})

        settings = DistillSettings(
            self.pretrain_epochs, self.batch_size, self.pretrain_lr, problem.seed, problem.space.input_shape,
            run.device, self.pretrain_batches, run.work / "candidates.pt" if run.work else None, self.checkpoint_every,
            self.micro_batches, problem.show_progress)
        distill(run.net, options, run.train_data, settings, problem.world, log_pretraining)

    @staticmethod
    def scores(run, options) -> tuple[float, list[np.ndarray]]:
        """The teacher's loss on the held-out examples and its change per swapped candidate."""
        from nas.training.layerwise import loss_changes

        shape = run.problem.space.input_shape
        xh, yh = run.train_data.batch(run.held, slice(None), shape)
        return loss_changes(run.net, options, xh.to(run.device, memory_format=torch.channels_last), yh.to(run.device))

    def select(self, run, scores, costs, fixed) -> list[Selection]:
        selections = select_ops(scores, costs, run.problem.budget - fixed, self.k, self.overlap, self.solver, self.gap)
        if not selections:
            raise NASError("the ILP found no selection within the budget")
        return selections

    def rank(self, run, options, selections, fixed) -> dict:
        """Each selection with its pretrained ops, by its loss on the held-out examples (logged)."""
        from nas.training.train import accuracy

        problem, space = run.problem, run.problem.space
        decisions = space.layer_decisions()

        def to_arch(sel):
            values = {d.name: options[i][j] for i, (d, j) in enumerate(zip(decisions, sel.choice))}
            return space.validate(space.default_arch().replace(**values))

        candidates = []
        for rank, sel in enumerate(selections):
            acc, loss = accuracy(run.net, run.train_data, run.held, space.input_shape, 256, run.device,
                                 arch=to_arch(sel))
            candidates.append({"solution": rank + 1, "arch": dict(to_arch(sel)), "objective": sel.objective,
                               "proven_gap": sel.gap, "cost": fixed + sel.cost, "held_out_loss": loss,
                               "held_out_accuracy": acc})
            problem.log_progress(rank + 1, {"selection: objective": sel.objective, "selection: proven gap": sel.gap,
                                            "selection: cost": fixed + sel.cost, "selection: held-out loss": loss})
        best = min(range(len(candidates)), key=lambda i: (candidates[i]["held_out_loss"], i))
        return {"candidates": candidates, "best": best, "arch": to_arch(selections[best])}

    def fine_tune(self, run, ranked):
        """The best selection fine-tuned with distillation from the teacher, into the ledger."""
        from nas.training.train import train

        problem = run.problem
        before = ranked["candidates"][ranked["best"]]["held_out_accuracy"]

        def fine_tuned(s, arch):
            model = run.net.extract(arch)
            metrics = train(model, run.train_data, problem.space.input_shape, run.recipe_for(self.finetune_epochs),
                            problem.seed, teacher=run.net.teacher, distill_weight=self.distill_weight,
                            temperature=self.temperature)
            metrics["held_out_accuracy_before_finetuning"] = before
            return Score(metrics["accuracy"], metrics, model.cpu())

        return problem.evaluate(ranked["arch"], fine_tuned)

    def report_lines(self, run, extras, selections, found) -> list[str]:
        problem, cost_model = run.problem, run.problem.cost_model
        teacher, metric, unit = extras["teacher"], problem.evaluator.metric, cost_model.unit
        best = extras["selections"][extras["chosen_solution"] - 1]
        n_options = sum(len(d.options) for d in problem.space.layer_decisions())
        return [f"teacher ({teacher['weights']}): {metric} {teacher['accuracy']:.4f}, "
                f"{cost_model.name} {format_cost(teacher['cost'], unit)}",
                f"candidates: {extras['candidates_searched']} of {n_options}"
                + (" (zero-shot: teacher and identity)" if self.zero_shot else
                   " (prefiltered: no costlier than the teacher's layer)" if self.prefilter else ""),
                f"ILP: {len(selections)} selections under {format_cost(problem.budget, unit)}, largest proven gap "
                f"{max(s.gap for s in selections):.3%}, {sum(s.seconds for s in selections):.2f} s; "
                f"solution {extras['chosen_solution']} has the lowest held-out loss ({best['held_out_loss']:.4f})",
                f"found: {metric} {found.quality:.4f} after fine-tuning with distillation, "
                f"{cost_model.name} {format_cost(found.cost, unit)} ({found.cost / teacher['cost']:.0%} of the teacher)"]


class HANTRun:
    """What the steps of one HANT search share: the problem, the data (with the held-out
    examples taken out of training), the device, the network and the checkpoint folder."""

    def __init__(self, searcher: ILPSearch, problem, data, recipe):
        from nas.training.harness import search_device

        self.problem, self.data, self.searcher = problem, data, searcher
        self.device = search_device(searcher.device, recipe)
        self.recipe = dataclasses.replace(recipe, device=self.device)
        self.work = problem.checkpoint_folder("hant")
        if self.work is not None and problem.world.is_main:
            self.work.mkdir(parents=True, exist_ok=True)
        self.net = None
        self.train_data, self.held = data, None

    def hold_out(self) -> None:
        from nas.training.layerwise import hold_out

        self.train_data, self.held = hold_out(self.data, self.searcher.held_out, self.problem.seed)

    def recipe_for(self, epochs: int):
        """The run's training recipe for ``epochs`` epochs on this search's device."""
        return dataclasses.replace(self.recipe, epochs=epochs)
