"""The package as a user installs it: the wheel carries every config and data file, and installed into a
fresh environment it composes the named sweeps and paper rows from a folder that is not the checkout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow  # builds a wheel and runs an installer and an interpreter in subprocesses

DATA = ["zr_ablate/analysis/published_ptb.csv", "zr_ablate/analysis/published_recipes.yaml"]
LAUNCHER = "hydra_plugins/zr_ablate_slurm/__init__.py"
# Run in the fresh environment, from outside the checkout: where the package was imported from, and what it
# composes.
COMPOSE = """
import json
import hydra_plugins.zr_ablate_slurm
import zr_ablate.schema  # registers the schema the defaults list starts from
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

with initialize_config_module("zr_ablate.conf", version_base="1.3"):
    grid = compose("config", overrides=["grid=ablation_medium", "hydra/launcher=slurm"], return_hydra_config=True)
    gal = compose("config", overrides=["paper=gal_large"])
print(json.dumps({
    "package": zr_ablate.__file__,
    "launcher_module": hydra_plugins.zr_ablate_slurm.__file__,
    "sweep": grid.sweep,
    "params": OmegaConf.to_container(grid.hydra.sweeper.params),
    "launcher": grid.hydra.launcher._target_,
    "gal": [gal.optim.decay_after, gal.model.hidden, gal.dropout.recurrent.gates, gal.dropout.recurrent.p],
}))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    # Built from a copy of the sources: setuptools keeps build/ beside them, and a file left there by an
    # earlier build (a module since removed) would be packed too.
    src = work / "src"
    src.mkdir()
    shutil.copy(REPO / "pyproject.toml", src)
    for package in ("zr_ablate", "hydra_plugins"):
        shutil.copytree(REPO / package, src / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
        + ["-w", str(work / "dist"), str(src)],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    [found] = (work / "dist").glob("zr_ablate-*.whl")
    return found


def test_the_wheel_carries_every_config_and_data_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {p.relative_to(REPO).as_posix() for p in (REPO / "zr_ablate" / "conf").rglob("*.yaml")}
    assert {c.split("/")[2] for c in configs} >= {"grid", "paper", "wandb", "model", "dropout", "hydra"}
    assert configs <= names, sorted(configs - names)
    assert set(DATA) | {LAUNCHER} <= names, sorted(set(DATA) | {LAUNCHER} - names)


def test_the_installed_wheel_composes_grids_and_paper_rows_outside_the_checkout(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # torch, Hydra, pip and the rest come from the environment running the tests, added as plain paths: the
    # .pth files there (an editable install of this checkout among them) do not run in the new environment.
    here = sysconfig.get_paths()
    (Path(site) / "test-dependencies.pth").write_text("\n".join(dict.fromkeys([here["purelib"], here["platlib"]])))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing of the checkout on the path
    install = subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed", str(wheel)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    run = subprocess.run([python, "-c", COMPOSE], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    for module in ("package", "launcher_module"):
        assert Path(got[module]).is_relative_to(venv), got[module]  # the installed copy, not the checkout
    assert got["sweep"] == "ablation_medium"
    assert got["params"] == {"model": "medium", "dropout": "none,naive,zaremba,variational", "seed": "1,2,3"}
    assert got["launcher"] == "hydra_plugins.zr_ablate_slurm.SlurmLauncher"
    assert got["gal"] == [11, 1500, "untied", 0.3]
