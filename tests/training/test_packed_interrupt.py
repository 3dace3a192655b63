"""A packed group stopped by SIGTERM (training/packed_job.run_packed): every member's record says it was
interrupted and how many epochs its kept checkpoint holds, also when the signal came between an epoch's row
and its checkpoint; the same call again resumes every member from there and completes them."""

import signal

import pandas as pd
import pytest
import torch

from tests.helpers import ptb_slice
from zr_ablate.bench.workload import settings
from zr_ablate.experiment.build import model as build_model
from zr_ablate.model.packed import PackedLM
from zr_ablate.records import FAILED, read_result
from zr_ablate.training import packed_job
from zr_ablate.training.interrupt import Interrupted
from zr_ablate.training.packed_job import MemberJob, Schedule, run_packed

SCHEDULE = Schedule(
    lr=1.0, lr_decay=2.0, decay_after=1, clip=5.0, weight_decay=0.0, max_epochs=3, test_protocol="fast",
    limits={"train": 10, "val": 4, "test": 4},
)  # fmt: skip
MEMBERS = [("naive", 1), ("zaremba", 2)]


def group(tmp_path, data, members):
    """The members (placement, seed) packed, and their jobs' folders under tmp_path."""
    packed = PackedLM([build_model(settings("tiny", p, "auto", (f"seed={s}",)), len(data.vocab)) for p, s in members])
    config = {p: {"model": {"name": "tiny"}, "dropout": {"name": p}, "seed": s} for p, s in members}  # as recorded
    jobs = [MemberJob(f"{p}-{s}", tmp_path / f"{p}-{s}", config[p]) for p, s in members]
    return packed, jobs


def test_a_group_stopped_between_an_epoch_row_and_its_checkpoint_records_the_checkpoint_s_epochs(
    tmp_path, ptb_dir, monkeypatch
):
    data = ptb_slice(ptb_dir, bptt=5, train_tokens=3000, eval_tokens=600, test_protocol="fast")
    data.setup()
    write = packed_job._checkpoint

    def stopped_in_epoch_2(member, model, m, epoch, *rest):
        if epoch == 1 and m == 1:  # the first member's checkpoint of epoch 2 written, the second's not
            raise Interrupted(signal.SIGTERM)
        write(member, model, m, epoch, *rest)

    monkeypatch.setattr(packed_job, "_checkpoint", stopped_in_epoch_2)
    packed, jobs = group(tmp_path, data, MEMBERS)
    with pytest.raises(Interrupted):
        run_packed(packed, data, jobs, SCHEDULE, torch.device("cpu"))
    first, second = (read_result(job.job_dir) for job in jobs)
    for record in (first, second):
        assert record["status"] == FAILED and record["error"] == (
            "interrupted by SIGTERM; rerun the same command to resume from the last checkpoint"
        )
    # epochs.csv has both rows of epoch 2; the second member's checkpoint holds epoch 1 only, and so does its record
    assert (first["epochs"], second["epochs"]) == (2, 1)
    assert [torch.load(j.job_dir / "checkpoints/last.ckpt", weights_only=False)["epoch"] for j in jobs] == [1, 0]
    # members resume from one epoch (the launcher groups them so); the second alone resumes after epoch 1
    monkeypatch.setattr(packed_job, "_checkpoint", write)
    packed, jobs = group(tmp_path, data, MEMBERS[1:])
    [result] = run_packed(packed, data, jobs, SCHEDULE, torch.device("cpu"))
    assert result["status"] == "completed" and result["resumed_from_epoch"] == 1 and result["epochs"] == 3
    assert list(pd.read_csv(jobs[0].job_dir / "epochs.csv").epoch) == [1, 2, 3]
