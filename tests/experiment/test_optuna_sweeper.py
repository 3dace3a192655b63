"""Tuning dropout rates with the Optuna sweeper: the search space, what a job returns to it, a study that
resumes after a kill without repeating its finished trials, and the tuned presets reading the best rates."""

import json
import math
import os
import re
import signal
import subprocess
import time
from types import SimpleNamespace

import optuna
import pytest
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution

from tests.conftest import REPO
from tests.helpers import cmd, run
from zr_ablate.experiment import optuna_sweeper
from zr_ablate.experiment.optuna_space import bounds, clean, rates, search_space
from zr_ablate.experiment.optuna_sweeper import OptunaSweeper, objective
from zr_ablate.records import RESULT

SEARCH = ["hparams_search=naive", "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=1", "logger.mode=disabled"]


def test_search_space_reads_hydras_sweep_grammar():
    space, fixed = search_space(
        ["dropout.p=range(0.05,0.75,0.05)", "x=interval(0.1,0.5)", "y=choice(a,b)", "model=tiny"]
    )
    assert space["dropout.p"] == FloatDistribution(0.05, 0.7, step=0.05)  # Hydra's range: the end excluded
    assert space["x"] == FloatDistribution(0.1, 0.5) and space["y"] == CategoricalDistribution(["a", "b"])
    assert fixed == ["model=tiny"]
    low, high = bounds({"dropout.p": "range(0.05,0.75,0.05)"}, ["model=tiny"])
    assert (low, high) == (["model=tiny", "dropout.p=0.05"], ["model=tiny", "dropout.p=0.7"])


def test_a_job_returns_its_best_validation_perplexity_to_the_sweeper():
    assert objective({"status": "completed", "best_val_ppl": 280.5}) == 280.5
    assert objective({"status": "diverged", "best_val_ppl": 900.0}) == math.inf  # the worst, not its early best
    assert math.isnan(objective({"status": "failed", "best_val_ppl": 300.0}))  # the study marks it failed


class Launcher:
    """A stand-in launcher: each job's value is a function of its overrides; it keeps what it was given."""

    def __init__(self):
        self.jobs = []

    def launch(self, overrides, initial_job_idx):
        self.jobs += overrides
        return [SimpleNamespace(return_value=300 + 100 * (float(o[-1].split("=")[1]) - 0.3) ** 2) for o in overrides]


def sweeper(tmp_path, n_trials: int, space: str) -> tuple[OptunaSweeper, Launcher]:
    storage = f"sqlite:///{tmp_path}/studies.db"
    s = OptunaSweeper(storage, "s", n_trials, n_jobs=2, seed=0, n_startup_trials=10, params={"dropout.p": space})
    s.config, s.launcher = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}), Launcher()
    s.settings = lambda overrides: {"trainer": {"max_epochs": 9}, "dropout": {"p": float(overrides[-1][10:])}}
    return s, s.launcher


def test_a_proposal_of_tried_rates_trains_nothing_and_does_not_count(tmp_path):
    """A stepped space: TPE proposes tried rates again. Each rate trains once, n_trials counts distinct rates,
    a study asked for more trials than its space holds ends at every rate, and each repeat names its trial."""
    s, launcher = sweeper(tmp_path, 6, "range(0.1,0.6,0.1)")  # 5 rates, 6 asked
    s.sweep(["model=tiny"])
    launched = [o[-1] for o in launcher.jobs]
    assert sorted(launched) == [f"dropout.p={p}" for p in (0.1, 0.2, 0.3, 0.4, 0.5)]  # each once, all of them
    study = optuna.load_study(study_name="s", storage=s.storage)
    done = {t.number: t for t in study.trials if t.state.name == "COMPLETE"}
    repeats = [t for t in study.trials if t.state.name == "FAIL"]
    assert len(done) == 5 and len(repeats) >= 1 and all(t.user_attrs["repeat_of"] in done for t in repeats)
    assert all(rates(t.params) == rates(done[t.user_attrs["repeat_of"]].params) for t in repeats)
    assert rates(study.best_trial.params) == (("dropout.p", 0.3),)

    s, launcher = sweeper(tmp_path / "b", 4, "range(0.05,0.75,0.05)")  # 14 rates, 4 asked
    s.sweep(["model=tiny"])
    assert len(launcher.jobs) == len(set(map(tuple, launcher.jobs))) == 4


@pytest.mark.parametrize("fails", [False, True], ids=["completed", "failed"])
@pytest.mark.parametrize("space", ["range(0.1,0.6,0.1)", "interval(0.1,0.5)"], ids=["stepped", "continuous"])
def test_a_sampler_that_proposes_only_tried_rates(tmp_path, monkeypatch, caplog, fails, space):
    """A sampler stuck on p 0.2 (TPE ignores failed trials, so a failed rate comes back too): on a stepped
    space the untried rates are then drawn at random until the budget (6, of a space of 5) is met, each
    trained once; on a continuous space the study ends there."""
    monkeypatch.setattr(optuna_sweeper, "MAX_REPEATS", 5)
    fixed = lambda seed=None, n_startup_trials=10: optuna.samplers.PartialFixedSampler(  # noqa: E731
        {"dropout.p": 0.2}, optuna.samplers.RandomSampler(seed)
    )
    monkeypatch.setattr(optuna.samplers, "TPESampler", fixed)
    s, launcher = sweeper(tmp_path, 6, space)
    if fails:
        monkeypatch.setattr(
            Launcher,
            "launch",
            lambda self, o, initial_job_idx: self.jobs.extend(o) or [SimpleNamespace(return_value=math.nan) for _ in o],
        )
    for _ in range(2):  # a second command trains nothing more
        with caplog.at_level("INFO"):
            s.sweep(["model=tiny"])
    launched = [o[-1] for o in launcher.jobs]
    if space.startswith("range"):
        assert (
            sorted(launched) == [f"dropout.p={p}" for p in (0.1, 0.2, 0.3, 0.4, 0.5)] and launched[0] == "dropout.p=0.2"
        )
        assert "proposed only tried rates 5 times in a row (1 of 5 trials); the rest are drawn at random" in caplog.text
        repeats = [t for t in trials(s.storage, "s") if "repeat_of" in t.user_attrs]
        assert len(repeats) == 5  # once settled, the command draws untried rates without asking TPE again
    else:
        assert launched == ["dropout.p=0.2"]
        assert "proposed only tried rates 5 times in a row (1 of 6 trials); it has settled" in caplog.text


def test_a_trial_cut_short_while_it_was_asked_is_failed_not_trained_without_its_rates(tmp_path):
    s, launcher = sweeper(tmp_path, 2, "range(0.1,0.6,0.1)")
    optuna.create_study(storage=s.storage, study_name="s").ask()  # killed before a rate was drawn: no params
    s.sweep(["model=tiny"])
    assert len(launcher.jobs) == 2 and all(o[-1].startswith("dropout.p=") for o in launcher.jobs)
    study = optuna.load_study(study_name="s", storage=s.storage)
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE", "COMPLETE"]


def test_a_study_resumed_with_other_settings_stops_in_one_line(tmp_path):
    """Trials trained for 9 epochs and trials for 5 in one study would mix two objectives: refused."""
    s, launcher = sweeper(tmp_path, 2, "range(0.1,0.6,0.1)")
    s.sweep(["model=tiny"])
    s, launcher = sweeper(tmp_path, 3, "range(0.1,0.6,0.1)")
    s.settings = lambda overrides: {"trainer": {"max_epochs": 5}, "dropout": {"p": 0.1}}
    with pytest.raises(SystemExit) as stop:
        s.sweep(["model=tiny"])
    assert str(stop.value).startswith("zr_ablate: error: the study s (sqlite:///") and launcher.jobs == []
    assert "other settings (trainer.max_epochs: 9 -> 5); pass study.name=<a new name>" in str(stop.value)
    s, launcher = sweeper(tmp_path, 3, "range(0.1,0.6,0.1)")  # the same settings: it goes on
    s.sweep(["model=tiny"])
    assert len(launcher.jobs) == 1


def trials(storage: str, name: str = "naive-tiny") -> list:
    try:
        return optuna.load_study(study_name=name, storage=storage).trials
    except KeyError:  # not created yet
        return []


@pytest.mark.slow  # sweeps in subprocesses
def test_a_study_killed_after_its_first_trial_resumes_and_runs_exactly_three(tmp_path, ptb_dir):
    storage = f"sqlite:///{tmp_path}/studies.db"
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen(
        cmd(tmp_path, ptb_dir, *SEARCH, multirun=True), cwd=REPO, stdout=log, stderr=log, start_new_session=True
    )
    deadline = time.monotonic() + 300
    while not any(t.state.name == "COMPLETE" for t in trials(storage)):
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.1)
    os.killpg(first.pid, signal.SIGKILL)  # the whole command, mid-way into its second trial
    first.wait()
    [done] = [t for t in trials(storage) if t.state.name == "COMPLETE"]
    jobs = {p.name: p for p in (tmp_path / "tune-naive-tiny").iterdir() if (p / RESULT).is_file()}
    [done_job] = [name for name in jobs if f"dropout.p={clean(done.params['dropout.p'])}," in name]
    kept = (jobs[done_job] / RESULT).stat().st_mtime_ns
    cut_short = [t.number for t in trials(storage) if t.state.name == "RUNNING" and t.params]

    again = run(tmp_path, ptb_dir, *SEARCH, multirun=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert re.search(rf"1 of 3 trials finished, {len(cut_short)} to resume", again.stdout + again.stderr)
    # A kill that lands while the second trial is being asked leaves it without rates: failed, not counted.
    unasked = [t for t in trials(storage) if not t.params]
    final = [t for t in trials(storage) if t.params]
    assert len(final) == 3 and {t.state.name for t in final} == {"COMPLETE"}
    assert all(t.state.name == "FAIL" for t in unasked)
    assert (jobs[done_job] / RESULT).stat().st_mtime_ns == kept  # the finished trial did not run again
    runs = {p.name: json.loads((p / RESULT).read_text()) for p in (tmp_path / "tune-naive-tiny").iterdir()}
    assert len(runs) == len({t.params["dropout.p"] for t in final}) == 3
    for t in final:  # each trial's value is its job's best validation perplexity
        [record] = [r for r in runs.values() if r["config"]["dropout"]["p"] == clean(t.params["dropout.p"])]
        assert record["status"] == "completed" and t.value == record["best_val_ppl"]

    # The same search for another epoch count would mix two objectives in one study: one line, no trial.
    other = run(
        tmp_path, ptb_dir, *SEARCH[:1], "hydra.sweeper.n_trials=4", *SEARCH[2:], "trainer.max_epochs=1", multirun=True
    )
    assert other.returncode == 1 and len(trials(storage)) == len(final) + len(unasked)
    assert "other settings (trainer.max_epochs: 2 -> 1)" in other.stderr.strip().splitlines()[-1]

    # The tuned preset runs naive at the study's best rate.
    tuned = run(tmp_path, ptb_dir, "tuned=naive", "logger.mode=disabled", "sweep=tuned")
    assert tuned.returncode == 0, tuned.stderr[-3000:]
    [job] = (tmp_path / "tuned").iterdir()
    best = clean(min((t for t in final), key=lambda t: t.value).params["dropout.p"])
    assert json.loads((job / RESULT).read_text())["config"]["dropout"]["p"] == best


@pytest.mark.slow
def test_a_tuned_preset_without_its_study_and_a_bad_search_range_are_one_line(tmp_path, ptb_dir):
    proc = run(tmp_path, ptb_dir, "tuned=zaremba", "logger.mode=disabled")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert (
        line.startswith("zr_ablate: error: ")
        and "run its search first (python run.py -m hparams_search=zaremba" in line
    )
    bad = [*SEARCH, "hydra.sweeper.params={dropout.p:'range(0.5,1.5,0.5)'}"]  # p = 1.0 at the high end
    proc = run(tmp_path, ptb_dir, *bad, multirun=True)
    assert proc.returncode == 1 and "dropout probability must be in [0, 1)" in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "studies.db").exists()  # stopped before the study was made


@pytest.mark.slow
def test_trials_asked_together_train_packed_and_the_study_gets_each_ones_value(tmp_path, ptb_dir):
    """hydra/launcher=packed under the Optuna sweeper: the two trials asked at once differ only in dropout.p,
    so they train as one packed group, and each trial's value is its own member's best validation perplexity."""
    search = [*SEARCH[:1], "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2", *SEARCH[3:], "trainer.max_epochs=1"]
    proc = run(tmp_path, ptb_dir, *search, "hydra/launcher=packed", multirun=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "packed: 2 jobs in one model" in proc.stdout
    final = trials(f"sqlite:///{tmp_path}/studies.db")
    assert [t.state.name for t in final] == ["COMPLETE", "COMPLETE"]
    runs = [json.loads(p.read_text()) for p in (tmp_path / "tune-naive-tiny").glob(f"*/{RESULT}")]
    assert len(runs) == 2 and all(len(r["packed_with"]) == 1 for r in runs)
    for t in final:
        [record] = [r for r in runs if r["config"]["dropout"]["p"] == clean(t.params["dropout.p"])]
        assert t.value == record["best_val_ppl"]
