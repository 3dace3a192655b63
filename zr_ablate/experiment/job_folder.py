"""A job's folder as one run takes it: its lock, the decision on the record it holds, and its .hydra/ files.
run.py and the packed launcher (packed_launcher.py) both go through these, so a job is taken the same way
whichever launcher runs it.

- job_lock: an advisory lock (flock on LOCK, holding "pid N on host H") held while the job runs, so that two
  sweeps writing the same folder never train one job twice; a lock left by a dead process is taken over.
- open_job: the record the job resumes from or skips ({} to start afresh, under on_stale), its .hydra/ files.
- save_hydra_files: the job's .hydra/ files, written once the job holds its folder.
- job_record: a job's folder and the settings its record holds, from its config as composed for a sweep.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from zr_ablate.records import (
    FINAL_STATUSES,
    HYDRA,
    LOCK,
    RecordError,
    changed_settings,
    job_name,
    read_result,
    set_aside,
    stale_line,
)

log = logging.getLogger(__name__)


def previous_record(job_dir: str | Path, config: dict, on_stale: str) -> dict:
    """The job's record as this run takes it: {} to start afresh (none yet, or one made with other settings
    set aside under on_stale=rerun), else the record to skip or resume from. One line and exit on an
    unreadable record, or on other settings under on_stale=stop."""
    try:
        previous = read_result(job_dir) or {}
    except RecordError as e:
        sys.exit(f"zr_ablate: error: {e}")
    changed = changed_settings(previous.get("config") or {}, config)
    if changed and on_stale == "rerun":
        where = set_aside(job_dir)
        log.info(
            "rerun: %s ran with other settings (%s); its records are now in %s", job_dir, "; ".join(changed), where
        )
        return {}
    if changed and on_stale == "stop":
        sys.exit(f"zr_ablate: error: {stale_line(job_dir, changed)}")
    return previous


def open_job(job_dir: str | Path, cfg: DictConfig, config: dict) -> dict:
    """Take a job's folder for this run (its lock held): the record it resumes from or skips (previous_record),
    with its .hydra/ files written; a final record keeps the config it ran with. A record whose status is in
    FINAL_STATUSES means: skip the job."""
    previous = previous_record(job_dir, config, cfg.on_stale)
    final = previous.get("status") in FINAL_STATUSES
    save_hydra_files(job_dir, cfg, config=not final)
    if final:
        log.info("skip: %s is already %s (delete its result.json to run it again)", job_dir, previous["status"])
    return previous


def save_hydra_files(job_dir: str | Path, cfg: DictConfig, config: bool = True) -> None:
    """The job's .hydra/ files, as Hydra writes them (overrides.yaml, then hydra.yaml and config.yaml unless
    `config` is false). Written here (hydra.output_subdir is null) once the job holds its folder: the config
    of a record kept or refused, or of a job another process runs, is never rewritten. overrides.yaml marks
    the job as one of this command for the sweep's summary (guard.SweepGuard), also when it is skipped."""
    folder = Path(job_dir) / HYDRA
    folder.mkdir(exist_ok=True)
    hydra_cfg = HydraConfig.instance().cfg  # {"hydra": ...}
    OmegaConf.save(hydra_cfg.hydra.overrides.task, folder / "overrides.yaml")
    if config:
        OmegaConf.save(hydra_cfg, folder / "hydra.yaml")
        OmegaConf.save(cfg, folder / "config.yaml")


def _flock(fd: int, mode: int, tries: int = 1) -> bool | None:
    """Take a flock without waiting: True if taken, False if another process holds it, None where the file
    system has no flock (some cluster mounts: ENOSYS, EOPNOTSUPP, ENOLCK)."""
    for attempt in range(tries):
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return True
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                return None
        if attempt + 1 < tries:
            time.sleep(0.1)  # lock_holder's look lasts microseconds: do not take it for a job running
    return False


def _holder(fd: int) -> str:
    return os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"


@contextmanager
def job_lock(job_dir: str | Path) -> Iterator[str | None]:
    """Hold the job folder's lock while the block runs, so that two sweeps writing the same folder never train
    one job twice. Yields None when this process holds it, else who does ("pid 123 on host node7"). The lock
    is advisory (flock) and ends with its process, so a lock left by a process that died is taken over. On a
    file system without flock, the job runs unlocked."""
    path = Path(job_dir) / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        taken = _flock(fd, fcntl.LOCK_EX, tries=5)
        if taken is False:
            yield _holder(fd)
            return
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode(), 0)
        try:
            yield None
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing the last descriptor releases the lock


def lock_holder(job_dir: str | Path) -> str | None:
    """Who holds the job folder's lock now ("pid 123 on host node7"), or None if nobody does. Looks with a
    shared lock, released at once, and writes nothing."""
    path = Path(job_dir) / LOCK
    if not path.is_file():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        return _holder(fd) if _flock(fd, fcntl.LOCK_SH) is False else None
    finally:
        os.close(fd)


def job_record(job) -> tuple[Path, dict]:
    """A job's config as composed for a sweep (with its hydra node) -> its folder and the settings its
    result.json records (everything but hydra, resolved)."""
    folder = Path(job.hydra.sweep.dir) / job_name(job.hydra.job.override_dirname)
    settings = OmegaConf.masked_copy(job, [k for k in job if k != "hydra"])
    return folder, OmegaConf.to_container(settings, resolve=True)
