"""Plots of a search: quality against cost with the Pareto front."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from nas.costs import format_cost  # noqa: E402
from nas.search import SearchResult  # noqa: E402


def _save(fig, path, layout: bool = True) -> Path:
    if layout:
        fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_pareto(result: SearchResult, path, cost_label: str, quality_label: str, title: str = "",
                references: list[tuple[str, float]] = ()) -> Path:
    """Every evaluation as a point, the front as a step line, the best starred;
    ``references`` (e.g. the space's presets as ``(name, cost)``) as labelled vertical
    lines at their cost: those within a factor 4 of the evaluated costs, at most 12."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    feas = [e for e in result.history if e.feasible]
    infeas = [e for e in result.history if not e.feasible]
    if feas:
        ax.scatter([e.cost for e in feas], [e.quality for e in feas], s=14, c="tab:blue", alpha=0.5,
                   label=f"evaluated ({len(result.history)})")
    if infeas:
        ax.scatter([e.cost for e in infeas], [e.quality for e in infeas], s=14, c="tab:gray", alpha=0.5,
                   marker="x", label="over budget")
    if result.pareto:
        ax.step([e.cost for e in result.pareto], [e.quality for e in result.pareto], where="post",
                c="tab:orange", lw=1.5)
        ax.scatter([e.cost for e in result.pareto], [e.quality for e in result.pareto], s=28, c="tab:orange",
                   label=f"Pareto front ({len(result.pareto)})", zorder=3)
    if result.best is not None:
        ax.scatter([result.best.cost], [result.best.quality], s=160, marker="*", c="tab:red", zorder=4,
                   label="best")
    if result.budget is not None:
        ax.axvline(result.budget, c="tab:red", ls="--", lw=1, label="budget")
    if references and result.history:
        costs = [e.cost for e in result.history]
        lo, hi = min(costs), max(costs)
        by_cost: dict[float, list[str]] = {}
        for name, cost in references:
            if lo / 4 <= cost <= hi * 4:
                by_cost.setdefault(cost, []).append(name)  # presets that are one network share a line
        near = sorted(by_cost.items())
        step = max(1, -(-len(near) // 12))
        for i, (cost, names) in enumerate(near[::step]):
            ax.axvline(cost, c="tab:green", ls=":", lw=0.8, label="presets" if i == 0 else None)
            ax.text(cost, 0.98, " = ".join(names) + " ", rotation=90, fontsize=6, color="tab:green", va="top",
                    ha="right", transform=ax.get_xaxis_transform())
    ax.set_xlabel(cost_label)
    ax.set_ylabel(quality_label)
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def trajectories_of(extras: dict) -> dict[str, list[dict]]:
    """A searcher's trajectories by panel title: the differentiable searcher's one, or
    one per TuNAS stage."""
    if extras.get("trajectory"):
        return {"": extras["trajectory"]}
    return {stage.get("stage", f"stage {i + 1}"): stage["trajectory"]
            for i, stage in enumerate(extras.get("stages") or []) if stage.get("trajectory")}


def plot_trajectory(trajectories: dict[str, list[dict]], path, title: str = "") -> Path | None:
    """How a search's architecture parameters moved, one panel per trajectory (e.g. per
    TuNAS stage): each alpha, or each decision's probability of the option it ended on,
    against the step. None when no trajectory holds either."""
    panels = {name: t for name, t in trajectories.items() if t and {"alpha", "probs"} & set(t[0])}
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 4.4), dpi=120, squeeze=False)
    for ax, (name, trajectory) in zip(axes[0], panels.items()):
        kind = "alpha" if "alpha" in trajectory[0] else "probs"
        steps = [t["step"] for t in trajectory]
        for decision in trajectory[0][kind]:
            if kind == "alpha":
                values = [t[kind][decision] for t in trajectory]
            else:
                last = trajectory[-1][kind][decision]
                final = max(range(len(last)), key=last.__getitem__)
                values = [t[kind][decision][final] for t in trajectory]
            ax.plot(steps, values, lw=1, alpha=0.8)
        if kind == "alpha":
            ax.axhline(1.0, c="k", lw=0.8, ls="--")
        ax.set_xlabel("step")
        ax.set_ylabel("alpha per unit (1: linear, collapses)" if kind == "alpha"
                      else "probability of the final option, per decision")
        heading = " / ".join(part for part in (title, name) if part)
        if heading:
            ax.set_title(heading, fontsize=9)
        ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_layer_costs(ops, cost_model, path, cost_label: str, title: str = "") -> Path:
    """Each layer's cost under ``cost_model`` (a LUT's ms, MACs, ReLUs, ...) as a bar, in
    network order; the whole network's cost (with the model's overhead) in the title."""
    ops = list(ops)
    costs = [cost_model.op_cost(op) for op in ops]
    width, height = 6.4, min(20.0, 1.2 + 0.2 * len(ops))
    fig, ax = plt.subplots(figsize=(width, height), dpi=120)
    ax.barh(range(len(ops)), costs, color="tab:blue")
    fontsize = 6 if len(ops) > 30 else 8
    ax.set_yticks(range(len(ops)), [op.name for op in ops], fontsize=fontsize)
    # margins from the longest layer name, not from tight_layout: laying out a hundred tick
    # labels draws the whole figure once more, most of the plot's time
    left = (max(len(op.name) for op in ops) * fontsize * 0.6 + 12) / 72 if ops else 0.5
    fig.subplots_adjust(left=min(0.6, left / width), right=0.97, top=1 - 0.55 / height, bottom=0.5 / height)
    ax.invert_yaxis()
    unit = cost_model.unit or "cost"
    ax.set_xlabel(f"{cost_label} per layer")
    total = cost_model.cost(ops)
    ax.set_title((f"{title}\n" if title else "") + f"total {format_cost(total, unit)} (overhead "
                 f"{format_cost(cost_model.overhead(), unit)})", fontsize=9)
    ax.grid(alpha=0.3, axis="x")
    return _save(fig, path, layout=False)
