"""The ledger: one Optuna study per run, in which every evaluated Arch is a trial.

Trial parameters are the Arch's decisions (categorical), values are ``[quality, cost]``
(maximise, minimise), and user attributes hold the Arch JSON, its key, the other metrics
and the worker that evaluated it. The study is the run's memory: the Optuna dashboard
shows it, and a re-run with the same storage and name finds its finished trials and
does not evaluate them again. A trial left RUNNING by a worker that was killed is taken
over by the next evaluation of the same Arch.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from nas.arch import Arch
from nas.errors import NASError
from nas.space import Space

optuna.logging.set_verbosity(optuna.logging.WARNING)


def dashboard_save_note():
    """optuna-dashboard's ``save_note``, read from its ``_note`` module alone where it has
    one: the package's ``__init__`` imports the dashboard server and scikit-learn (2.5 s
    here), which every training run would pay for one note."""
    import importlib.util

    spec = importlib.util.find_spec("optuna_dashboard")  # finds the package without importing it
    note_file = Path(spec.origin).parent / "_note.py" if spec is not None and spec.origin else None
    if note_file is not None and note_file.is_file():
        module_spec = importlib.util.spec_from_file_location("hwnas_optuna_dashboard_note", note_file)
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)
            return module.save_note
        except Exception:  # a release laid out otherwise: the public import
            pass
    from optuna_dashboard import save_note

    return save_note


@dataclass
class Evaluation:
    """One evaluated Arch: its quality, cost and other metrics, and its ledger trial."""

    arch: Arch
    quality: float
    cost: float
    metrics: dict = field(default_factory=dict)
    trial: int | None = None
    feasible: bool = True

    def to_dict(self) -> dict:
        return {"arch": dict(self.arch), "arch_key": self.arch.key(), "quality": self.quality, "cost": self.cost,
                "feasible": self.feasible, "trial": self.trial, "metrics": self.metrics}


def _process_start_ticks(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":  # a zombie is dead; only its entry remains
        return None
    return fields[19]


def worker_id() -> str:
    """host:pid:start-time, so a recycled pid is not mistaken for the same worker."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_process_start_ticks(pid)}"


#: seconds between heartbeats of a trial under evaluation, and how old a heartbeat may get
#: before a worker on another host counts as dead (its trial is then taken over)
HEARTBEAT_SECONDS = 20.0
HEARTBEAT_GRACE_SECONDS = 120.0


#: trials under evaluation in this process (token -> (ledger, trial id)), beaten by one thread
_beating: dict[int, tuple] = {}
_beating_lock = threading.Lock()
_beating_thread: threading.Thread | None = None


def _beat_forever() -> None:
    while True:
        time.sleep(HEARTBEAT_SECONDS)
        with _beating_lock:
            trials = list(_beating.values())
        for ledger, trial_id in trials:
            try:
                ledger.heartbeat(trial_id)
            except Exception:  # finished meanwhile, or a storage hiccup: the next beat will do
                pass


@contextlib.contextmanager
def beating(ledger, trial_id: int):
    """Heartbeats for ``trial_id`` while the block runs (one thread for the process, so an
    evaluation costs no thread of its own)."""
    global _beating_thread
    token = object()
    with _beating_lock:
        _beating[id(token)] = (ledger, trial_id)
        if _beating_thread is None:
            _beating_thread = threading.Thread(target=_beat_forever, name="nas-heartbeat", daemon=True)
            _beating_thread.start()
    try:
        yield
    finally:
        with _beating_lock:
            _beating.pop(id(token), None)


def worker_alive(worker: str, heartbeat: float | None = None) -> bool:
    """Whether a worker id names a live process: on this host by its pid and start time,
    on another host by the trial's last heartbeat (``time.time()`` seconds; a worker on
    another host without one counts as alive)."""
    try:
        host, pid, ticks = worker.rsplit(":", 2)
    except ValueError:
        return False
    if host != socket.gethostname():
        return heartbeat is None or time.time() - heartbeat < HEARTBEAT_GRACE_SECONDS
    return _process_start_ticks(int(pid)) == ticks


def trial_alive(t) -> bool:
    """Whether a RUNNING trial's worker is still evaluating it."""
    return worker_alive(t.user_attrs.get("worker", ""), t.user_attrs.get("heartbeat"))


def open_storage(storage: str | None):
    """``None`` or ``'memory'``: in memory; ``sqlite:///...`` or any Optuna storage URL; a
    path ending in ``.log``: a journal file; an Optuna storage object passes through."""
    if storage is None or storage == "memory":
        return optuna.storages.InMemoryStorage()
    if not isinstance(storage, str):
        return storage
    if storage.endswith(".log") and "://" not in storage:
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(storage))
    if "://" not in storage:
        raise NASError(f"storage {storage!r} is not a URL; use 'memory', a path ending in .log, "
                       "'sqlite:///PATH' or another database URL")
    for attempt in range(5):
        try:
            rdb = optuna.storages.RDBStorage(storage)
            if storage.startswith("sqlite:"):
                _write_ahead(rdb)
            return rdb
        except Exception as exc:  # SQLAlchemy raises many types for a bad URL or an unreachable server
            if "UniqueViolation" in str(exc) or "already exists" in str(exc):
                # Workers starting together on an empty database race to create Optuna's
                # tables; the loser opens them once the winner is done.
                time.sleep(0.5 * (attempt + 1))
                continue
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if "DatabaseError" in first or "malformed" in first:
                raise NASError(f"cannot open storage {storage!r}: {first}; the ledger file is damaged (e.g. a "
                               "truncated copy): move it, or the whole run folder, aside and start again, or choose "
                               "another run_name") from None
            raise NASError(f"cannot open storage {storage!r}: {first}") from None
    raise NASError(f"cannot open storage {storage!r}: its tables could not be created")


def _write_ahead(storage) -> None:
    """SQLite in write-ahead-log mode, synced at checkpoints rather than at every commit: a
    searcher's progress log commits a few hundred values per snapshot, 2.2 s a snapshot with
    a sync per commit against 0.8 s here. A power cut may lose the last commits, never the
    file's consistency; a run resumes from what its ledger holds anyway."""
    from sqlalchemy import event

    @event.listens_for(storage.engine, "connect")
    def _pragmas(connection, _record):
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    storage.engine.dispose()  # the connection that created the tables predates the pragmas


class Ledger:
    """An Optuna study recording every evaluation of one run."""

    def __init__(self, space: Space, study_name: str, storage=None, quality_name: str = "quality",
                 cost_name: str = "cost"):
        self.space = space
        self.storage = open_storage(storage)
        self.study = optuna.create_study(storage=self.storage, study_name=study_name, load_if_exists=True,
                                         directions=["maximize", "minimize"])
        if [d.name for d in self.study.directions] != ["MAXIMIZE", "MINIMIZE"]:
            raise NASError(f"study {study_name!r} in this storage is not a ledger of [quality, cost]")
        self.study_id = self.storage.get_study_id_from_name(study_name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.study.set_metric_names([quality_name, cost_name])
        self.worker = worker_id()
        self.distributions = {d.name: CategoricalDistribution(d.options) for d in space.decisions()}
        self._complete: dict[str, Evaluation] = {}
        self.refresh()
        # RUNNING trials whose worker died (a killed run), by arch key: taken over when
        # their arch comes up again
        self._stale = {t.user_attrs["arch_key"]: t._trial_id
                       for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                       if "arch_key" in t.user_attrs and not trial_alive(t)}
        # Registered in the study, so workers sharing it can split lists of candidates.
        self.storage.set_study_user_attr(self.study_id, f"worker {self.worker}", time.time())

    def live_workers(self) -> list[str]:
        """Ids of the workers registered in this study that are alive, in the order they
        registered (this worker included)."""
        attrs = self.storage.get_study_user_attrs(self.study_id)
        registered = sorted((when, key.split(" ", 1)[1]) for key, when in attrs.items() if key.startswith("worker "))
        return [w for _, w in registered if w == self.worker or worker_alive(w)]

    def done_searching(self) -> None:
        """Say that this worker starts no more evaluations (workers reading the whole shared
        search back wait for it)."""
        self.storage.set_study_user_attr(self.study_id, f"done {self.worker}", time.time())

    def still_searching(self) -> list[str]:
        """Live workers other than this one that may still start evaluations."""
        attrs = self.storage.get_study_user_attrs(self.study_id)
        return [w for w in self.live_workers() if w != self.worker and f"done {w}" not in attrs]

    def refresh(self) -> None:
        """Read the evaluations finished in the storage (by this or any other worker)."""
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            key = t.user_attrs.get("arch_key")
            if key is not None and key not in self._complete:
                self._complete[key] = self._evaluation(t)

    @staticmethod
    def _evaluation(t) -> Evaluation:
        return Evaluation(Arch.from_json(t.user_attrs["arch"]), t.values[0], t.values[1],
                          t.user_attrs.get("metrics", {}), t.number, t.user_attrs.get("feasible", True))

    def __len__(self) -> int:
        return len(self._complete)

    def _trials_of(self, key: str) -> list:
        return [t for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
                if t.user_attrs.get("arch_key") == key]

    def claim(self, arch: Arch, shared: bool = True) -> tuple[str, Evaluation | int | None]:
        """Who evaluates ``arch``: ``("done", Evaluation)``: it is in the ledger;
        ``("busy", None)``: a live worker is evaluating it; ``("mine", trial_id)``: this
        worker is to evaluate it, in a new RUNNING trial or in the trial of a worker that
        died (taken over, so its result is not lost). With ``shared`` (a storage other
        workers may use) the storage is read for their trials, and two workers that claim
        the same arch at once both create a trial: the lower trial number wins and the
        other is closed as FAIL. In memory, what this ledger knows suffices."""
        key = arch.key()
        if key in self._complete:
            return "done", self._complete[key]
        if not shared:
            if key in self._stale:
                return "mine", self._take_over(self._stale.pop(key))
            return "mine", self._new_trial(arch)
        trials = self._trials_of(key)
        for t in trials:
            if t.state == TrialState.COMPLETE:
                self._complete[key] = self._evaluation(t)
                return "done", self._complete[key]
        running = [t for t in trials if t.user_attrs.get("worker") != self.worker]
        if any(trial_alive(t) for t in running):
            return "busy", None
        if running:  # its worker died: take the trial over
            trial_id = self._take_over(min(running, key=lambda t: t.number)._trial_id)
            if self.storage.get_trial(trial_id).user_attrs.get("worker") != self.worker:
                return "busy", None  # another survivor took it over at the same moment
            return "mine", trial_id
        trial_id = self._new_trial(arch)
        first = min(self._trials_of(key), key=lambda t: t.number)  # this trial, or a rival's
        if first._trial_id != trial_id:
            self.fail(trial_id, f"claimed at the same time as trial {first.number}, which evaluates it")
            if first.state == TrialState.COMPLETE:
                self._complete[key] = self._evaluation(first)
                return "done", self._complete[key]
            return "busy", None
        return "mine", trial_id

    def _take_over(self, trial_id: int) -> int:
        """Make a dead worker's RUNNING trial this worker's."""
        self.storage.set_trial_user_attr(trial_id, "worker", self.worker)
        self.storage.set_trial_user_attr(trial_id, "resumed", True)
        self.heartbeat(trial_id)
        return trial_id

    def _new_trial(self, arch: Arch) -> int:
        params = {name: arch[name] for name in self.distributions}
        template = create_trial(state=TrialState.RUNNING, params=params, distributions=self.distributions,
                                user_attrs={"arch": arch.to_json(), "arch_key": arch.key(), "worker": self.worker,
                                            "heartbeat": time.time()})
        return self.storage.create_new_trial(self.study_id, template_trial=template)

    def heartbeat(self, trial_id: int) -> None:
        self.storage.set_trial_user_attr(trial_id, "heartbeat", time.time())

    def finish(self, trial_id: int, evaluation: Evaluation) -> Evaluation:
        self.storage.set_trial_user_attr(trial_id, "metrics", evaluation.metrics)
        self.storage.set_trial_user_attr(trial_id, "feasible", evaluation.feasible)
        self.storage.set_trial_state_values(trial_id, TrialState.COMPLETE, [evaluation.quality, evaluation.cost])
        evaluation.trial = self.storage.get_trial_number_from_id(trial_id)
        self._complete[evaluation.arch.key()] = evaluation
        return evaluation

    def fail(self, trial_id: int, reason: str) -> None:
        self.storage.set_trial_user_attr(trial_id, "error", reason)
        self.storage.set_trial_state_values(trial_id, TrialState.FAIL)

    def others_evaluating(self) -> list[Arch]:
        """The archs live workers other than this one are evaluating now."""
        return [Arch.from_json(t.user_attrs["arch"])
                for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                if "arch_key" in t.user_attrs and t.user_attrs.get("worker") != self.worker and trial_alive(t)]

    def close_stale(self) -> int:
        """Mark RUNNING trials of dead workers that nobody took over as FAIL; return how many."""
        stale = [t for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                 if "arch_key" in t.user_attrs and not trial_alive(t)]
        for t in stale:
            self.fail(t._trial_id, "abandoned: its worker died and the search did not propose it again")
        return len(stale)

    def evaluations(self) -> list[Evaluation]:
        return sorted(self._complete.values(), key=lambda e: e.trial)


class ProgressLog:
    """A searcher's own progress (controller probabilities, architecture parameters,
    losses) as a study beside its ledger, ``<ledger study>:progress``, in the same storage:
    one trial per quantity (user attribute ``quantity``), its value at each logged step an
    intermediate value, so the Optuna dashboard plots every quantity over the steps while
    the search runs; the last value becomes the trial's value when the search ends. A
    re-run of a finished search leaves the recorded progress as it is; a re-run of an
    unfinished one writes the same steps again (same seed, same values)."""

    def __init__(self, ledger: Ledger):
        self.storage = ledger.storage
        self.study_name = f"{ledger.study.study_name}:progress"
        self._study_id: int | None = None
        self._trials: dict[str, list] = {}  # quantity -> [trial id, finished, last value]
        self._numbers: dict[str, int] = {}  # quantity -> trial number

    def _open(self) -> None:
        self._study = optuna.create_study(storage=self.storage, study_name=self.study_name, load_if_exists=True)
        self._study_id = self.storage.get_study_id_from_name(self.study_name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._study.set_metric_names(["last logged value (not an objective)"])
        for t in self._study.get_trials(deepcopy=False):
            if "quantity" in t.user_attrs:
                self._trials[t.user_attrs["quantity"]] = [t._trial_id, t.state.is_finished(), None]
                self._numbers[t.user_attrs["quantity"]] = t.number

    def _label(self) -> None:
        """List every quantity in the study's note, shown above the dashboard's plots (their
        legends only say "trial #N"; a trial's page shows its quantity as a user attribute)."""
        rows = sorted((number, quantity) for quantity, number in self._numbers.items())
        dashboard_save_note()(self._study, "## The search's progress, not an evaluation\n\nEach trial is one quantity the "
                  "searcher logged (a decision's probability, a loss, a reward baseline); its values over the steps "
                  "are the trial's intermediate values. Read the **Intermediate Values** plot with the table below "
                  "(its legend says only the trial number). The Best Trial and History panels mean nothing here: "
                  "a trial's value is just the quantity's last value. The evaluations are in the study "
                  f"`{self.study_name.rsplit(':', 1)[0]}`.\n\n| trial | quantity |\n|---|---|\n"
                  + "\n".join(f"| #{number} | {quantity} |" for number, quantity in rows))

    def log(self, step: int, values: dict[str, float]) -> None:
        if self._study_id is None:
            self._open()
        new, pending = [], []
        for quantity, value in values.items():
            entry = self._trials.get(quantity)
            if entry is None:
                template = create_trial(state=TrialState.RUNNING, user_attrs={"quantity": quantity})
                entry = self._trials[quantity] = [self.storage.create_new_trial(self._study_id, template), False, None]
                new.append(quantity)
                self._numbers[quantity] = len(self._numbers)  # the study holds nothing but these trials
            if entry[1] or not math.isfinite(value):
                continue
            pending.append((entry[0], int(step), float(value)))
            entry[2] = float(value)
        self._write(pending)
        if new and not isinstance(self.storage, optuna.storages.InMemoryStorage):
            self._label()  # a dashboard can only show a study it can open

    def _write(self, values: list[tuple[int, int, float]]) -> None:
        """Intermediate values ``(trial id, step, value)``: in a database, a snapshot's few
        hundred values in one transaction (through Optuna's RDB storage's per-value writer,
        where this Optuna version has it: 0.3 s a snapshot against 1.4 s with a commit per
        value); elsewhere one call each."""
        batch = getattr(self.storage, "_set_trial_intermediate_value_without_commit", None)
        if batch is not None and values:
            from optuna.storages._rdb.storage import _create_scoped_session

            with _create_scoped_session(self.storage.scoped_session, True) as session:
                for trial_id, step, value in values:
                    batch(session, trial_id, step, value)
            return
        for trial_id, step, value in values:
            self.storage.set_trial_intermediate_value(trial_id, step, value)

    def finish(self) -> None:
        """Close the quantities' trials with their last values."""
        for entry in self._trials.values():
            if not entry[1] and entry[2] is not None:
                self.storage.set_trial_state_values(entry[0], TrialState.COMPLETE, [entry[2]])
                entry[1] = True


def flat_progress(prefix: str, state: dict, options: dict | None = None) -> dict[str, float]:
    """Named scalars from a searcher's state: ``{name: x}`` gives ``PREFIX name``, ``{name:
    [p0, p1, ...]}`` (probabilities over a decision's options) gives ``PREFIX name=OPTION``
    per option, the options taken from ``options[name]`` (else their indices)."""
    values = {}
    for name, value in state.items():
        if isinstance(value, (list, tuple)):
            labels = (options or {}).get(name) or range(len(value))
            for label, v in zip(labels, value):
                values[f"{prefix}{name}={label}"] = float(v)
        else:
            values[f"{prefix}{name}"] = float(value)
    return values
