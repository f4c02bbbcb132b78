"""Whose latencies: machine fingerprints, this machine's LUTs built on demand into the LUT
folder, another machine's LUT used only on purpose and labelled, and fast LUTs whose
predictions follow a full build. Nothing here assumes a shipped LUT is this machine's."""

import dataclasses
import json
import math

import numpy as np
import pytest
from conftest import run_cli
from torch import nn

import nas
import nas.lut as lut_mod
from nas import Decision, NASError, OpSpec, Space
from nas.latency import HarnessSettings
from nas.lut import LUTCost, LUTFile, build_lut, machine_lut_path
from nas.lut.fast import OpPredictor, design, family, size_params
from nas.machine import Fingerprint, this_machine

#: a test that compares latencies measured here runs alone, not beside other tests (README)
serial = pytest.mark.serial

FAST = HarnessSettings(warmup=1, rounds=2, min_run_time=0.005)


class Ladder(Space):
    """Convolutions at three positions, each with two kernels, three widths and an
    optional depthwise: dozens of OpSpecs in a few families, quick to measure."""

    name = "test_ladder"

    def __init__(self, resolution: int = 8, num_classes: int = 3, in_channels: int = 4):
        super().__init__(resolution, num_classes, in_channels)

    def _make_decisions(self):
        out = []
        for i in range(3):
            out += [Decision(f"w{i}", (8, 12, 16)), Decision(f"k{i}", (1, 3)), Decision(f"dw{i}", (False, True))]
        return out

    def ops(self, arch):
        ops, c, r = [], self.in_channels, self.resolution
        for i in range(3):
            w, k = arch[f"w{i}"], arch[f"k{i}"]
            ops.append(OpSpec.make("conv", f"conv{i}", c_in=c, c_out=w, res=r, k=k, act="relu"))
            if arch[f"dw{i}"]:
                ops.append(OpSpec.make("conv", f"dw{i}", c_in=w, c_out=w, res=r, k=3, groups=w, act="relu"))
            c = w
        return ops + [OpSpec.make("gap", "gap", c_in=c, res=r), OpSpec.make("linear", "fc", c_in=c,
                                                                             c_out=self.num_classes)]

    def build(self, arch):
        return nn.Sequential(*(op.build() for op in self.ops(arch)))


# ---------------------------------------------------------------------------- fingerprints


def test_fingerprint_of_this_machine_is_complete_and_stable():
    here = this_machine()
    assert here.complete() and here.device == "cpu" and here.threads == 1 and here.logical_cores >= 1
    assert here.id == this_machine().id and len(here.id) == 10
    assert here.matches(this_machine()) and here.differences(this_machine()) == []
    two = this_machine(threads=2)
    assert two.id != here.id and not two.matches(here) and two.differences(here) == ["threads: 2 vs 1"]
    assert Fingerprint.from_dict(here.to_dict()) == here
    # a file from before fingerprints records only part of one: never this machine's, even if equal so far
    partial = Fingerprint.from_dict({k: v for k, v in here.to_dict().items() if k != "cpu_id"})
    assert not partial.complete() and not partial.matches(here) and not here.matches(partial)
    assert "cpu_id: not recorded vs" in partial.differences(here)[0]
    assert here.processor in here.describe() and here.id in here.describe()


def another_machines(path):
    """Make the LUT file at ``path`` another machine's (a different processor)."""
    doc = json.loads(path.read_text())
    doc["meta"]["fingerprint"]["processor"] = "Some Other CPU @ 9.99GHz"
    doc["meta"]["fingerprint"]["cpu_id"] = "GenuineIntel 6/143/8"
    path.write_text(json.dumps(doc))


# ---------------------------------------------------------------------------- on demand, cache


def test_lut_is_built_on_demand_into_the_lut_folder_and_reused(tmp_path, monkeypatch, capsys):
    space = Ladder()
    monkeypatch.setenv(lut_mod.LUT_DIR_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(lut_mod, "FAST_TIMING", {"rounds": 1, "min_run_time": 0.002})
    monkeypatch.setattr(lut_mod, "CALIBRATION_MODELS", 4)
    measured = []
    real = lut_mod.op_builder
    monkeypatch.setattr(lut_mod, "op_builder", lambda op: measured.append(op.key) or real(op))
    cost = LUTCost("cpu", space, progress=False)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no LUT of this machine" in err and "building one (fast mode)" in err
    path = cost.path
    assert path.parent == tmp_path / "cache" / "cpu" / space.name and path.name.startswith(this_machine().id)
    lut = LUTFile.load(path)
    assert lut.complete and lut.on_this_machine() and lut.mode == "fast" and lut.meta["build_seconds"] > 0
    n_ops = len(space.all_ops())
    assert len(lut.entries) == n_ops and len(lut.overhead["models"]) == 4
    assert cost.provenance() == f"fast LUT of this machine [id {this_machine().id}]"
    arch = space.default_arch()
    assert cost.cost(space.ops(arch)) > 0
    # a second run finds it: nothing is measured or said
    measured.clear()
    again = LUTCost("cpu", space, progress=False)
    assert measured == [] and capsys.readouterr().err == "" and again.path == path
    # another configuration of the space is another table
    other = LUTCost("cpu", Ladder(resolution=6), progress=False)
    assert other.path != path and other.path.parent == path.parent
    # build=none refuses with the command that builds it
    # (the space's plug-in module first: the pasted command imports it)
    with pytest.raises(NASError, match="no LUT of this machine .* build it with: python -m nas.lut build "
                                       r"'plugins=\[test_machine_luts\]' space=test_ladder target=cpu mode=full "
                                       "space.resolution=10 space.num_classes=3 space.in_channels=4"):
        LUTCost("cpu", Ladder(resolution=10), build="none")
    # target.options.lut_dir overrides the environment
    elsewhere = LUTCost("cpu", space, lut_dir=str(tmp_path / "mine"), progress=False)
    assert elsewhere.path.parent == tmp_path / "mine" / "cpu" / space.name and elsewhere.lut.mode == "fast"


def test_an_interrupted_build_is_resumed_by_the_next_run(tmp_path, monkeypatch, capsys):
    space = Ladder()
    monkeypatch.setattr(lut_mod, "FAST_TIMING", {"rounds": 1, "min_run_time": 0.002})
    monkeypatch.setattr(lut_mod, "CALIBRATION_MODELS", 4)
    real_fit = lut_mod.calibrate_lut

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # stopped after the entries, before the calibration

    monkeypatch.setattr(lut_mod, "calibrate_lut", killed)
    with pytest.raises(KeyboardInterrupt):
        LUTCost("cpu", space, lut_dir=str(tmp_path), progress=False)
    path = machine_lut_path("cpu", space, dataclasses.replace(HarnessSettings(), rounds=1, min_run_time=0.002),
                            tmp_path)
    partial = LUTFile.load(path)
    assert not partial.complete and partial.timings()
    with pytest.raises(NASError, match="unfinished build"):
        LUTCost("cpu", space, file=str(path))
    monkeypatch.setattr(lut_mod, "calibrate_lut", real_fit)
    measured = []
    real = lut_mod.op_builder
    monkeypatch.setattr(lut_mod, "op_builder", lambda op: measured.append(op.key) or real(op))
    capsys.readouterr()
    cost = LUTCost("cpu", space, lut_dir=str(tmp_path), progress=False)
    assert "continuing the interrupted build" in capsys.readouterr().err
    assert measured == [] and cost.lut.complete and len(cost.lut.overhead["models"]) == 4


# ---------------------------------------------------------------------------- another machine's LUT


def test_another_machines_lut_is_used_only_on_purpose_and_labelled(tmp_path, capsys):
    space = Ladder()
    lut = build_lut(space, "cpu", FAST, tmp_path, overhead_models=3, progress=False)
    theirs = tmp_path / "theirs.json"
    theirs.write_text(lut.path.read_text())
    another_machines(theirs)
    assert not LUTFile.load(theirs).on_this_machine()
    # named on purpose: used, and it says whose in one line
    capsys.readouterr()
    cost = LUTCost("cpu", space, file=str(theirs))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "another machine: Some Other CPU @ 9.99GHz" in err
    assert cost.provenance(short=True).startswith("full LUT of another machine [id ")
    info = cost.lut.info()
    assert info["this_machine"] is False and info["machine_id"] != this_machine().id
    assert info["this_machine_id"] == this_machine().id
    # it cannot be extended here, nor filled in by measuring here
    with pytest.raises(NASError, match="another machine"):
        build_lut(space, "cpu", FAST, path=theirs, progress=False)
    doc = json.loads(theirs.read_text())
    doc["entries"].pop(next(iter(doc["entries"])))
    theirs.write_text(json.dumps(doc))
    missing = LUTCost("cpu", space, file=str(theirs), measure_missing=True)
    gone = next(op for a in space.enumerate() for op in space.ops(a) if op.key not in missing.lut.entries)
    with pytest.raises(NASError, match="cannot measure it comparably"):
        missing.op_cost(gone)


def test_latency_report_measures_here_and_says_whose_the_lut_is(tmp_path):
    space = Ladder()
    lut = build_lut(space, "cpu", FAST, tmp_path, overhead_models=3, progress=False)
    theirs = tmp_path / "theirs.json"
    theirs.write_text(lut.path.read_text())
    another_machines(theirs)
    arch = space.default_arch()
    for cost, ours in ((LUTCost("cpu", space, file=str(lut.path)), True),
                       (LUTCost("cpu", space, file=str(theirs)), False)):
        problem = nas.SearchProblem(space, cost, nas.get_evaluator("train"))
        report = lut_mod.latency_report(problem, arch)
        assert report["lut_this_machine"] is ours and report["measured_latency_ms"] > 0
        assert report["measured_in"] == "a fresh process"  # not the search's, whose state slows it
        assert report["lut_latency_ms"] == pytest.approx(cost.cost(space.ops(arch)))
        line = lut_mod.describe_latency(report, "the best")
        assert ("LUT error" in line) is ours and ("not comparable" in line) is (not ours)
        assert lut_mod.latency_report(problem, arch) == report  # measured once per arch


# ---------------------------------------------------------------------------- fast mode


def test_predictor_recovers_family_lines_and_the_design_covers_every_kind():
    space = Ladder()
    ops = space.all_ops()
    sizes = size_params(ops)
    # synthetic latencies: each family on its own line in MACs and memory
    families = sorted({family(op, sizes) for op in ops}, key=str)
    coef = {fam: (0.01 * (i + 1), 0.3 + 0.1 * i, 0.05) for i, fam in enumerate(families)}

    def truth(op):
        a, b, c = coef[family(op, sizes)]
        return a + b * op.macs() / 1e6 + c * op.memory_elements() / 1e5

    shares = lut_mod.op_shares(space, n_archs=50)
    chosen = design(ops, shares, 20)
    assert len(chosen) >= 20 and len({o.key for o in chosen}) == len(chosen)
    assert {op.kind for op in chosen} == {op.kind for op in ops}
    assert all(op in chosen for op in ops if shares.get(op.key, 0) >= 0.5)  # in most networks: measured
    assert design(ops, shares, 20) == chosen  # deterministic
    predictor = OpPredictor({op: truth(op) for op in chosen})
    for op in ops:
        assert predictor.predict(op) == pytest.approx(truth(op), rel=1e-6) or predictor.source(op) != "family"
    assert sum(predictor.source(op) == "family" for op in ops) > 0


@serial
def test_fast_lut_predicts_a_full_build(tmp_path, monkeypatch):
    """Fast mode against a full build of the same space on the same machine: the unmeasured
    entries are predicted, and whole architectures priced by the two agree."""
    monkeypatch.setattr(lut_mod, "FAST_MIN_MEASURED", 10)  # the small space: measure 30% of it
    space = Ladder()
    settings = HarnessSettings(warmup=1, rounds=3, min_run_time=0.01)
    full = build_lut(space, "cpu", settings, tmp_path / "full", overhead_models=0, progress=False)
    fast = build_lut(space, "cpu", settings, tmp_path / "fast", overhead_models=0, progress=False, mode="fast",
                     fast_share=0.3)
    predicted = [k for k, e in fast.entries.items() if e.get("predicted")]
    assert predicted and set(fast.entries) == set(full.entries)
    assert len(fast.timings()) < len(full.entries)
    rng = np.random.default_rng(0)
    archs = [space.sample(rng) for _ in range(60)]
    ours = np.array([fast.layer_sum(space.ops(a)) for a in archs])
    exact = np.array([full.layer_sum(space.ops(a)) for a in archs])
    from scipy import stats

    assert stats.spearmanr(ours, exact).statistic > 0.8
    # The two builds run minutes apart, and this machine's speed drifts by more than 10%
    # in that time (a CI run saw every model 30% faster during one of them): compare the
    # predictions up to one common factor, which is what the calibration models fix.
    ratio = ours / exact
    assert np.median(np.abs(ratio / np.median(ratio) - 1)) < 0.15
    assert all(math.isfinite(fast.entries[k]["ms"]) and fast.entries[k]["ms"] > 0 for k in predicted)
    # made full later: every entry measured, no prediction left
    made_full = build_lut(space, "cpu", settings, path=fast.path, overhead_models=0, progress=False)
    assert made_full.mode == "full" and len(made_full.timings()) == len(made_full.entries) == len(full.entries)


# ---------------------------------------------------------------------------- the run


def test_run_on_a_new_machine_builds_its_lut_and_reports_measured_latency(tmp_path, cli_env):
    cli_env = dict(cli_env, **{lut_mod.LUT_DIR_ENV: str(tmp_path / "cache")})
    args = ["space=nb201", "evaluator=table", "searcher=random", "searcher.n_evals=3", "target=cpu",
            "progress=false", "save_model=false"]
    out = run_cli(args + ["run_name=first"], tmp_path, cli_env)
    assert out.returncode == 0, out.stderr
    assert "no LUT of this machine" in out.stderr and "building one (fast mode)" in out.stderr
    result = json.loads((tmp_path / "runs" / "first" / "result.json").read_text())
    assert result["lut"]["this_machine"] is True and result["lut"]["machine_id"] == this_machine().id
    assert result["lut"]["mode"] == "fast" and result["lut"]["file"].startswith(str(tmp_path / "cache"))
    best = result["best_latency"]
    assert best["lut_latency_ms"] == pytest.approx(result["best"]["cost"]) and best["measured_latency_ms"] > 0
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("latency of the best: ") and "ms measured here (LUT error" in last
    assert "fast LUT of this machine" in last
    # the next run reuses the table
    again = run_cli(args + ["run_name=second"], tmp_path, cli_env)
    assert again.returncode == 0 and "no LUT of this machine" not in again.stderr
    # the reference table on purpose: said once on stderr, and in every latency shown
    ref = run_cli(args + ["run_name=ref", "target.options.reference=true"], tmp_path, cli_env)
    assert ref.returncode == 0, ref.stderr
    assert "using reference LUT of another machine" in ref.stderr
    result = json.loads((tmp_path / "runs" / "ref" / "result.json").read_text())
    assert result["lut"]["this_machine"] is False and result["lut"]["reference"] is True
    assert "reference LUT of another machine" in result["cost_provenance"]
    best_line = next(line for line in ref.stdout.splitlines() if line.startswith("best: "))
    assert "(reference LUT of another machine [id " in best_line
    assert ref.stdout.strip().splitlines()[-1].endswith("(not comparable: the LUT is another machine's)")
    from nas.app.report import front_table

    table = "\n".join(front_table(result))
    assert "cpu (ms): reference LUT of another machine: " in table and "(not comparable" in table
    # no LUT and build=none: one line with the command that builds it
    none = run_cli(args + ["run_name=none", "target.options.build=none",
                           f"target.options.lut_dir={tmp_path / 'empty'}"], tmp_path, cli_env)
    assert none.returncode == 2 and none.stderr.count("\n") == 1
    assert "build it with: python -m nas.lut build space=nb201 target=cpu mode=full" in none.stderr
    # the command works when pasted (quicker timing added), and the run then finds its table
    import shlex
    import subprocess
    import sys

    command = shlex.split(none.stderr.split("build it with: ", 1)[1])
    assert command[:3] == ["python", "-m", "nas.lut"]
    built = subprocess.run([sys.executable, *command[1:], "rounds=1", "min_run_time=0.002", "overhead_models=3",
                            "progress=false"], cwd=tmp_path, env=cli_env, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    found = run_cli(args + ["run_name=found", "target.options.build=none",
                            f"target.options.lut_dir={tmp_path / 'empty'}"], tmp_path, cli_env)
    assert found.returncode == 0, found.stderr
    assert "full LUT of this machine" in found.stdout.strip().splitlines()[-1]


def test_library_search_prices_with_this_machines_lut(tmp_path, monkeypatch):
    from nas.evaluators import Evaluator, Score

    class FewerMACs(Evaluator):  # no training: quality is a fixed function of the arch
        metric = "score"

        def evaluate(self, space, arch):
            return Score(-sum(op.macs() for op in space.ops(arch)) / 1e6)

    monkeypatch.setenv(lut_mod.LUT_DIR_ENV, str(tmp_path))
    monkeypatch.setattr(lut_mod, "FAST_TIMING", {"rounds": 1, "min_run_time": 0.002})
    monkeypatch.setattr(lut_mod, "CALIBRATION_MODELS", 4)
    space = Ladder()
    result = nas.search(space, nas.get_searcher("random", n_evals=3), cost_model="lut", evaluator=FewerMACs())
    [path] = (tmp_path / "cpu" / space.name).glob("*.json")
    lut = LUTFile.load(path)
    assert lut.on_this_machine() and lut.complete and result.n_evals == 3
    assert result.best.cost == pytest.approx(lut.overhead_ms + lut.scale * lut.layer_sum(space.ops(result.best.arch)))


def test_predictor_rescales_another_machines_table_by_family():
    space = Ladder()
    ops = space.all_ops()
    sizes = size_params(ops)
    families = sorted({family(op, sizes) for op in ops}, key=str)
    # this machine: 1.7x the other one, and one family 2.5x (ops of a family move together)
    truth = {op.key: 0.01 + op.macs() / 1e6 for op in ops}
    factor = {fam: 2.5 if i == 0 else 1.7 for i, fam in enumerate(families)}
    theirs = {op.key: truth[op.key] / factor[family(op, sizes)] for op in ops}
    chosen = design(ops, lut_mod.op_shares(space, n_archs=50), 20)
    predictor = OpPredictor({op: truth[op.key] for op in chosen}, prior=theirs)
    for op in ops:
        fam = family(op, sizes)
        if any(family(o, sizes) == fam for o in chosen) and op not in chosen:
            assert predictor.source(op) == "prior"
            n = sum(family(o, sizes) == fam for o in chosen)
            # the family's ratio, shrunk by one pseudo-observation toward the kind's mean ratio
            assert predictor.predict(op) / theirs[op.key] == pytest.approx(
                math.exp((n * math.log(factor[fam]) + np.mean([math.log(factor[family(o, sizes)]) for o in chosen
                                                               if o.kind == op.kind])) / (n + 1)))
