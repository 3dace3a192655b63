"""Shared fixtures. Tests run on the real PTB files, in the folder $ZR_ABLATE_PTB_DIR names (.ci/run sets it;
`make test PTB_DIR=<folder>` passes it on)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
# Without a GPU, Triton kernels (zr_ablate.model.triton_loop) run in Triton's CPU interpreter. Triton reads this
# when it is first imported, so it is set before any test module imports anything.
if not os.environ.get("CUDA_VISIBLE_DEVICES") and not Path("/dev/nvidia0").exists():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Under pytest-xdist (make test: two workers on CI's 2 cores) each worker gets one torch thread: two
# 2-thread processes on 2 cores run far slower than one (oversubscription). Read when torch is imported.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
from zr_ablate.schema import CONF_DIR  # noqa: E402  after the environment above: torch reads it

SHA256 = dict(OmegaConf.load(CONF_DIR / "data" / "ptb.yaml").sha256)  # the files' checksums, from the config
PTB_FILES = ", ".join(SHA256)


def pytest_collection_modifyitems(config, items) -> None:
    """Before any test runs: one line naming the fix when tests that read PTB are collected without it."""
    if not any("ptb_dir" in getattr(item, "fixturenames", ()) for item in items):
        return
    folder = os.environ.get("ZR_ABLATE_PTB_DIR")
    if not folder:
        pytest.exit(f"zr_ablate tests: set ZR_ABLATE_PTB_DIR to a folder holding {PTB_FILES}", returncode=4)
    if not (Path(folder) / "ptb.train.txt").is_file():
        pytest.exit(f"zr_ablate tests: ZR_ABLATE_PTB_DIR={folder} does not hold {PTB_FILES}", returncode=4)


@pytest.fixture(scope="session")
def ptb_dir() -> Path:
    return Path(os.environ["ZR_ABLATE_PTB_DIR"]).resolve()


@pytest.fixture(scope="session")
def file_urls(ptb_dir) -> dict[str, str]:
    """file:// addresses of the real files: the download path, exercised without a network."""
    return {s: (ptb_dir / f"ptb.{s}.txt").as_uri() for s in ("train", "valid", "test")}
