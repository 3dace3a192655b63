"""Every command the README and docs/ quote still works, so none rots.

- `python run.py ...`: every job it would launch is composed from zr_ablate/conf and checked the way the
  sweep's guard checks jobs before anything trains (experiment.guard.job_overrides, experiment.build.check);
  a single run is composed as given. Composing is what breaks when a preset, profile, grid, key or launcher
  is renamed, and it takes milliseconds where training takes hours.
- `python -m zr_ablate...`: the module runs as `python -m` runs it, and its own parser reads the quoted
  arguments; it is stopped right after parsing (a module without a parser, such as recipes, runs whole).
- A repository path a command names (reports/..., zr_ablate/...) exists.
- The README's headline sweep runs for real on the tiny profile, and so does the report command it ends with.
"""

from __future__ import annotations

import argparse
import os
import re
import runpy
import shlex
import subprocess
import sys
import warnings

import pytest
from hydra import compose, initialize_config_module
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from tests.conftest import REPO
from zr_ablate.experiment.build import check
from zr_ablate.experiment.guard import job_overrides

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
PREFIXES = ("python run.py", "python -m zr_ablate")
HEADLINE = "python run.py -m dropout=none,naive,zaremba,variational"
# The tiny profile, one epoch and one thread: a real run of a quoted sweep in seconds.
TINY = ["model=tiny", "trainer.max_epochs=1", "threads=1", "logger.mode=disabled", "trainer.enable_progress_bar=false"]


def quoted_commands(text: str) -> list[str]:
    """The commands in code blocks (indented or fenced; a trailing `# comment` dropped) and in inline code."""
    found, prose, fenced = [], [], False
    for line in re.sub(r"\\\n\s*", " ", text).splitlines():  # a shell line continued with a backslash is one
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced or line.startswith("    "):
            command = re.split(r"\s+#", line.strip())[0]
            found += [command] if command.startswith(PREFIXES) else []
        else:
            prose.append(line)
    spans = (" ".join(span.split()) for span in re.findall(r"`([^`]+)`", "\n".join(prose)))
    return found + [span for span in spans if span.startswith(PREFIXES)]


QUOTED = {c: page.relative_to(REPO).as_posix() for page in reversed(PAGES) for c in quoted_commands(page.read_text())}
COMMANDS = sorted((page, c) for c, page in QUOTED.items())  # each command once, with the first page quoting it
RUN = [c for c in COMMANDS if c[1].startswith("python run.py")]
MODULE = [c for c in COMMANDS if c[1].startswith("python -m ")]


def written(text: str) -> str:
    """The page without what a program printed: lines of a fenced block that are not a command (a log line
    may repeat a command after its timestamp)."""
    kept, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced or line.lstrip().startswith(PREFIXES):
            kept.append(line)
    return "\n".join(kept)


def test_every_quoted_command_is_found():
    """Each mention of a command in the pages is one the tests below check (none hides in a form the
    reader above does not see), and the README's two commands are among them."""
    for page in PAGES:
        text = page.read_text()
        mentions = sum(written(text).count(prefix) for prefix in PREFIXES)
        assert mentions == len(quoted_commands(text)), f"{page.name}: a command outside code the tests read"
    assert ("README.md", HEADLINE) in COMMANDS


@pytest.fixture(scope="module")
def conf():
    with initialize_config_module("zr_ablate.conf", version_base="1.3"):
        yield


def jobs(args: list[str]) -> list[list[str]]:
    """The override list of every job `python run.py ARGS` launches: for a multirun, as its sweeper expands
    the command line and the grid's own sweeper.params."""
    flags = [a for a in args if a.startswith("-")]
    overrides = [a for a in args if not a.startswith("-")]
    assert set(flags) <= {"-m", "--multirun"}, f"a flag the docs should not need: {flags}"
    if not flags:
        return [overrides]
    parsed = OverridesParser.create().parse_overrides(overrides)
    fixed = [o for o, p in zip(overrides, parsed) if not p.is_sweep_override()]
    params = compose("config", overrides=fixed, return_hydra_config=True).hydra.sweeper.params
    return job_overrides(OmegaConf.create({"hydra": {"sweeper": {"params": params}, "overrides": {"task": overrides}}}))


@pytest.mark.slow  # composes some 150 jobs, about 100 ms each
@pytest.mark.parametrize("page,command", RUN, ids=[f"{p}: {c}" for p, c in RUN])
def test_run_command_composes_every_job(conf, page, command, tmp_path):
    args = shlex.split(command)[2:]
    expanded = jobs(args)
    assert expanded, command
    for overrides in expanded:
        if any(o.startswith("tuned=") for o in overrides):  # reads a study the docs' search makes first
            fresh = f"out_root={tmp_path}"  # where no study is, whatever this checkout's outputs/ holds
            job = compose("config", overrides=[*overrides, fresh], return_hydra_config=True)
            with pytest.raises(Exception, match=r"no study .* does not exist; run its search first"):
                check(job)
        else:
            check(compose("config", overrides=overrides, return_hydra_config=True))
    paths_exist(args)


class Parsed(Exception):
    """Raised right after a module's parser accepted the quoted arguments: nothing else runs."""


def stop_after(parse):
    def parse_then_stop(self, argv=None, namespace=None):
        parse(self, argv, namespace)
        raise Parsed

    return parse_then_stop


@pytest.mark.parametrize("page,command", MODULE, ids=[f"{p}: {c}" for p, c in MODULE])
def test_module_command_parses_its_arguments(monkeypatch, capsys, page, command):
    module, *args = shlex.split(command)[2:]
    # every way a module's parser may be asked (budget's overrides mix with its options: parse_intermixed_args)
    for name in ("parse_args", "parse_intermixed_args"):
        monkeypatch.setattr(argparse.ArgumentParser, name, stop_after(getattr(argparse.ArgumentParser, name)))
    monkeypatch.setattr(sys, "argv", [module, *args])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # runpy: the module was imported before (by the tests)
        try:
            runpy.run_module(module, run_name="__main__")
        except Parsed:
            pass
        except SystemExit as e:
            pytest.fail(f"{command}: exit {e.code}: {capsys.readouterr().err.strip()}")
    paths_exist(args)


def paths_exist(args: list[str]) -> None:
    for arg in args:
        value = arg.rpartition("=")[2]
        if value.startswith(("reports/", "zr_ablate/", "docs/")):
            assert (REPO / value).exists(), f"{value} is not in the repository"


@pytest.mark.slow
def test_headline_sweep_and_its_report_run_on_the_tiny_profile(tmp_path, ptb_dir):
    command = shlex.split(HEADLINE)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    sweep = subprocess.run(
        [sys.executable, *command[1:], *TINY, f"out_root={tmp_path / 'outputs'}", f"data.dir={ptb_dir}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert sweep.returncode == 0, sweep.stderr[-2000:]
    summary, report_line = sweep.stdout.strip().splitlines()[-2:]
    assert "4 completed, 0 diverged, 0 failed" in summary, sweep.stdout[-2000:]
    report_command = report_line.removeprefix("its report: ")
    assert report_command.startswith("python -m zr_ablate.report "), report_line
    # Run where it writes its default reports/<sweep>/: a folder of the test's, not the repository.
    report = subprocess.run(
        [sys.executable, *shlex.split(report_command)[1:]], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert report.returncode == 0, report.stderr[-2000:]
    results = (tmp_path / "reports" / "adhoc" / "results.md").read_text()
    assert all(f"| {p} |" in results for p in ("none", "naive", "zaremba", "variational"))
