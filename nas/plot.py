"""Plots of a search: quality against cost with the Pareto front."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from nas.search import SearchResult  # noqa: E402


def plot_pareto(result: SearchResult, path, cost_label: str, quality_label: str, title: str = "") -> Path:
    """Every evaluation as a point, the front as a step line, the best starred."""
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
    ax.set_xlabel(cost_label)
    ax.set_ylabel(quality_label)
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
