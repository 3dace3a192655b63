"""A Hydra sweeper over Optuna's ask/tell API: search dropout rates under a trial budget, resumable.

    python run.py -m hparams_search=naive model=demo hydra/launcher=local    # zr_ablate/conf/hparams_search/

Each trial is one ordinary job (its folder named from its overrides, its records, its W&B run); run.py
returns the job's best validation perplexity to this sweeper (`objective`), which tells the study. The study
lives in an Optuna storage (SQLite by default: study.storage), so the budget counts what the study holds,
not what this command ran: `n_trials` is the size of the study, and a rerun of the same command after a
kill adds only the trials still missing. A trial the kill cut short (left running in the storage) is run
again with the same rates, so its job resumes from its last checkpoint, and told under its own number.
One command at a time works on a study (a lock file beside a SQLite storage says so). A study keeps the
settings its trials share (user attribute `settings`); a command whose jobs would run with other settings
(another epoch count, profile or data) stops with one line before any trial, instead of mixing objectives.

n_trials counts distinct rates. On a stepped space TPE often proposes rates it has tried (a failed one too:
TPE ignores failed trials). Such a repeat trains nothing, is kept in the study as failed with user attribute
repeat_of = the trial it repeats (so TPE's model holds each rate once instead of piling weight on one), and
does not count. After MAX_REPEATS repeats in a row TPE has settled: on a finite space short of its budget the
rest of the command draws untried rates at random (enqueued as the next trials), so a study reaches n_trials
distinct rates, or every rate of a space smaller than that; on a continuous space the study ends there, and
its log says so.

Why not hydra-optuna-sweeper: its 1.3 release pins optuna<3, whose SQLite storage fails under SQLAlchemy 2
(pip installs both here unless sqlalchemy<2 is pinned), and its n_trials counts the trials of one command,
so a rerun after a kill runs n_trials more and leaves the cut-short trial running forever.

Search space (hydra.sweeper.params), in Hydra's override grammar, and the tuned rates: optuna_space.py.
"""

from __future__ import annotations

import fcntl
import logging
import math
import random
import sys
from contextlib import contextmanager
from pathlib import Path

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper

from zr_ablate.experiment.job_folder import job_record
from zr_ablate.experiment.optuna_space import bounds, clean, grid, rates, search_space, space_size
from zr_ablate.records import changed_settings

log = logging.getLogger(__name__)
FINISHED = ("COMPLETE", "FAIL", "PRUNED")  # trial states that count against n_trials
MAX_REPEATS = 20  # proposals of tried rates in a row after which the sampler has settled


def objective(result: dict) -> float:
    """What a job gives the sweeper to minimise: its best validation perplexity; inf if it diverged (the
    worst value, so the search moves away), nan if it failed or has none (the study marks it failed)."""
    if result.get("status") == "diverged":
        return math.inf
    value = result.get("best_val_ppl")
    return math.nan if value is None or result.get("status") != "completed" else float(value)


@contextmanager
def study_lock(storage: str, name: str):
    """Hold a lock file beside a SQLite storage for the study, so that two commands never adopt each other's
    running trials; other storages are left to their owner."""
    if not storage.startswith("sqlite:///"):
        yield
        return
    db = Path(storage.removeprefix("sqlite:///"))
    path = db.parent / f"{db.name}.{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            sys.exit(f"zr_ablate: error: another command is running the study {name} ({path} is locked); wait for it")
        yield


class OptunaSweeper(Sweeper):
    def __init__(
        self,
        storage: str,
        study_name: str,
        n_trials: int,
        n_jobs: int = 1,
        direction: str = "minimize",
        seed: int | None = None,
        n_startup_trials: int = 10,
        params: dict | None = None,
    ):
        """n_trials: the study's size; n_jobs: trials launched at once (a batch for the launcher); seed and
        n_startup_trials: the TPE sampler's (random trials before it models the results)."""
        if n_trials < 1 or n_jobs < 1:
            sys.exit(f"zr_ablate: error: hydra.sweeper.n_trials ({n_trials}) and n_jobs ({n_jobs}) must be >= 1")
        self.storage, self.study_name, self.n_trials, self.n_jobs = storage, study_name, n_trials, n_jobs
        self.direction, self.seed, self.n_startup_trials = direction, seed, n_startup_trials
        self.params = dict(params or {})
        self.job_idx = 0
        self.drawing = False  # whether TPE has settled and untried rates are drawn at random

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> list:
        import optuna
        from optuna.trial import TrialState

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        space, fixed = search_space([f"{k}={v}" for k, v in self.params.items()] + list(arguments))
        if not space:
            sys.exit("zr_ablate: error: the Optuna sweeper has nothing to search; set hydra.sweeper.params")
        Path(self.config.hydra.sweep.dir).mkdir(parents=True, exist_ok=True)
        with study_lock(self.storage, self.study_name):
            study = optuna.create_study(
                storage=self.storage, study_name=self.study_name, direction=self.direction, load_if_exists=True
            )
            self._check_settings(study, space, bounds(self.params, arguments)[0])
            # Seeded by the trials so far: a resumed command must not draw the first command's rates again.
            seed = None if self.seed is None else self.seed + len(study.trials)
            study.sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=self.n_startup_trials)
            target = min(self.n_trials, space_size(space))
            if target < self.n_trials:
                log.info("study %s: its space holds %d distinct rates, fewer than n_trials", self.study_name, target)
            # Trials a killed command left running: run each again under its own number (its job resumes).
            # One killed while it was being asked has not all its rates and never trained: it is failed.
            cut_short = []
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                if set(t.params) == set(space):
                    cut_short.append(t.number)
                else:
                    log.info("study %s: trial %d was cut short before its rates were drawn", self.study_name, t.number)
                    study.tell(t.number, state=TrialState.FAIL)
            log.info(
                "study %s (%s): %d of %d trials finished, %d to resume",
                self.study_name,
                self.storage,
                len(self._trained(study, space)),
                target,
                len(cut_short),
            )
            returns, settled = [], False
            while True:
                batch = [(n, study.trials[n].params) for n in cut_short[: self.n_jobs]]
                cut_short = cut_short[len(batch) :]
                if not settled:
                    settled = self._ask(study, space, batch, target)
                if not batch:
                    break
                overrides = [fixed + [f"{k}={clean(v)}" for k, v in params.items()] for _, params in batch]
                results = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
                self.job_idx += len(results)
                for (number, params), result in zip(batch, results):
                    self._tell(study, number, params, result)
                returns.append(results)
            best = study.best_trial if study.get_trials(states=(TrialState.COMPLETE,)) else None
            if best is not None:
                at = ", ".join(f"{k}={clean(v)}" for k, v in best.params.items())
                log.info("study %s: best value %.2f at %s", self.study_name, best.value, at)
        return returns

    def settings(self, overrides: list[str]) -> dict:
        """The settings a job with these overrides records (result.json's config)."""
        return job_record(self.hydra_context.config_loader.load_sweep_config(self.config, overrides))[1]

    def _check_settings(self, study, space: dict, low: list[str]) -> None:
        """Keep the settings the study's trials share (those of `low`, the job at the range's low end), or stop
        in one line where this command's differ."""
        now = self.settings(low)
        kept = study.user_attrs.get("settings")
        if kept is None:  # a new study, or one from before settings were kept
            study.set_user_attr("settings", now)
            return
        changed = [c for c in changed_settings(kept, now) if c.split(":")[0] not in space]
        if changed:
            sys.exit(
                f"zr_ablate: error: the study {self.study_name} ({self.storage}) holds trials run with other "
                f"settings ({'; '.join(changed)}); pass study.name=<a new name> to start another study"
            )

    @staticmethod
    def _trained(study, space: dict) -> dict:
        """{rates: the first trial at them} over the study's finished trials, repeats and trials without rates
        aside: the distinct rates that count against n_trials."""
        from optuna.trial import TrialState

        trained = {}
        for t in study.get_trials(deepcopy=False, states=[TrialState[s] for s in FINISHED]):
            if "repeat_of" not in t.user_attrs and set(t.params) == set(space):
                trained.setdefault(rates(t.params), t.number)
        return trained

    def _ask(self, study, space: dict, batch: list, target: float) -> bool:
        """Fill `batch` up to n_jobs with trials at untried rates while fewer than `target` are tried; record a
        proposal of tried rates (finished, failed included, or in this batch) as a repeat. True once the sampler
        has settled on a continuous space."""
        from optuna.trial import TrialState

        known = self._trained(study, space) | {rates(params): number for number, params in batch}
        repeats = 0
        while len(batch) < self.n_jobs and len(known) < target:
            if self.drawing:  # TPE settled on a finite space: an untried point, drawn at random
                untried = [point for point in grid(space) if rates(point) not in known]
                draw = random.Random(None if self.seed is None else self.seed + len(study.trials))
                study.enqueue_trial(draw.choice(untried))
            trial = study.ask(space)
            point = rates(trial.params)
            if point not in known:
                batch.append((trial.number, trial.params))
                known[point], repeats = trial.number, 0
                continue
            trial.set_user_attr("repeat_of", known[point])
            study.tell(trial.number, state=TrialState.FAIL)
            repeats += 1
            if repeats == MAX_REPEATS:
                finite = not math.isinf(space_size(space))
                log.info(
                    "study %s: the sampler proposed only tried rates %d times in a row (%d of %d trials); %s",
                    self.study_name,
                    MAX_REPEATS,
                    len(known),
                    target,
                    "the rest are drawn at random from the untried rates" if finite else "it has settled",
                )
                if not finite:
                    return True
                self.drawing = True  # for the rest of this command
        return False

    @staticmethod
    def _tell(study, number: int, params: dict, result) -> None:
        from optuna.trial import TrialState

        try:
            value = float(result.return_value)  # raises the job's own error where it failed outside run.py
        except Exception as e:
            log.warning("trial %d (%s) failed: %s", number, params, e)
            study.tell(number, state=TrialState.FAIL)
            return
        if math.isnan(value):
            study.tell(number, state=TrialState.FAIL)
        else:
            study.tell(number, value)
