"""The job folder's lock on its own (experiment/job_folder.py): it names its holder, and a lock left by a
process that died is taken over."""

import os
import socket

from zr_ablate.experiment.job_folder import job_lock, lock_holder
from zr_ablate.records import LOCK


def test_the_job_lock_names_its_holder_and_is_taken_over_once_free(tmp_path):
    me = f"pid {os.getpid()} on host {socket.gethostname()}"
    with job_lock(tmp_path) as holder:
        assert holder is None and (tmp_path / LOCK).read_text().strip() == me
        with job_lock(tmp_path) as second:  # another open file: as another process sees it
            assert second == me
        assert lock_holder(tmp_path) == me
    assert lock_holder(tmp_path) is None
    (tmp_path / LOCK).write_text("pid 1 on host a-node-that-died\n")  # left by a process that died
    assert lock_holder(tmp_path) is None
    with job_lock(tmp_path) as holder:
        assert holder is None and (tmp_path / LOCK).read_text().strip() == me
