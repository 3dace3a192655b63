"""run_job's records when the job cannot end normally: a disk that fills up while it trains."""

import errno
import json
from pathlib import Path

import pytest

from tests.helpers import tiny_lm
from zr_ablate.training.job import run_job

TRAINER = dict(max_epochs=1, enable_progress_bar=False, enable_model_summary=False)


def test_a_full_disk_leaves_the_job_failed_not_running(tmp_path, ptb_dir, monkeypatch):
    """Every write of result.json after the first fails with ENOSPC (the disk filled up during training): the
    job still ends recorded as failed, saying why, and the error reaches the caller (a sweep counts it)."""
    dm, module = tiny_lm(ptb_dir)
    write_text, written = Path.write_text, []

    def filling_up(self, *args, **kwargs):
        if self.name.startswith("result.json"):
            written.append(self)
            if len(written) > 1:
                raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", filling_up)
    with pytest.raises(OSError, match="No space left"):
        run_job(module, dm, str(tmp_path), TRAINER, config={}, test_protocol="paper")
    monkeypatch.undo()
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["status"] == "failed" and "could not be written (a full disk?)" in result["error"]
