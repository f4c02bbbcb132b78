"""``python -m nas.report RUN_DIR``: the Pareto front of a finished run as a table.

One row per architecture on the quality-cost front (cheapest first), with its trial,
quality, cost, MACs, parameters and the decisions in which it differs from the first row
of the front (the whole of the first row's decisions are printed above the table), from
the run's ``result.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from nas.checks import read_json
from nas.costs import format_cost, si
from nas.errors import USER_ERROR_EXIT_CODE, NASError


def read_result(run_dir) -> dict:
    path = Path(run_dir).expanduser() / "result.json"
    if not path.is_file():
        raise NASError(f"{str(run_dir)!r} is not a finished run directory: it has no result.json")
    result = read_json(path, "result file", "run the search again to rewrite it")
    if not isinstance(result, dict):
        raise NASError(f"{str(path)!r} is not a result of a run (a JSON object)")
    return result


def front_table(result: dict) -> list[str]:
    """The lines of the table (see the module docstring)."""
    front = result.get("pareto") or []
    metric = result.get("quality_metric", "quality")
    unit = result.get("cost_unit")
    cost = f"{result.get('target') or result.get('cost_model') or 'cost'}"
    lines = [f"run {result.get('run_name')}: space {result.get('space')}, searcher {result.get('searcher')}, "
             f"{result.get('n_evals')} evaluations, {len(front)} on the front"
             + (f", budget {format_cost(result['budget'], unit)}" if result.get("budget") is not None else "")]
    if not front:
        return lines + ["(no architecture within the budget)"]
    reference = front[0]["arch"]
    lines.append(f"first row's decisions: {json.dumps(reference)}")
    best_key = (result.get("best") or {}).get("arch_key")
    header = f"{'':2}{'trial':>6} {metric:>10} {cost:>18} {'MACs':>9} {'params':>9}  decisions (vs first row)"
    lines += [header, "-" * len(header)]
    for e in front:
        diff = {k: v for k, v in e["arch"].items() if reference.get(k) != v}
        mark = "* " if e.get("arch_key") == best_key else "  "
        metrics = e.get("metrics") or {}
        lines.append(f"{mark}{e.get('trial', '-')!s:>6} {e['quality']:>10.4f} {format_cost(e['cost'], unit):>18} "
                     f"{si(metrics['macs']) if 'macs' in metrics else '-':>9} "
                     f"{si(metrics['params']) if 'params' in metrics else '-':>9}  "
                     + (" ".join(f"{k}={v}" for k, v in diff.items()) or "(first row)"))
    lines.append("* best: highest quality within the budget")
    if result.get("cost_provenance"):  # whose machine a latency column is
        lines.append(f"{cost} ({unit}): {result['cost_provenance']}")
    if result.get("best_latency"):
        from nas.lut import describe_latency

        lines.append(describe_latency(result["best_latency"], "the best"))
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print("usage: python -m nas.report RUN_DIR")
        return 0
    try:
        if len(argv) != 1:
            raise NASError(f"give one run folder, got {len(argv)} arguments; usage: python -m nas.report RUN_DIR")
        result = read_result(argv[0])
        try:
            lines = front_table(result)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:  # a hand-edited file
            raise NASError(f"{argv[0]!r}: result.json is not a result of a run ({type(exc).__name__}: {exc})") \
                from None
    except NASError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USER_ERROR_EXIT_CODE
    print("\n".join(lines))
    return 0
