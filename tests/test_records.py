"""The job record's rules on their own: safe folder names, usable records, the full-disk fallback."""

import errno
import json
from pathlib import Path

import pytest

from zr_ablate import records
from zr_ablate.records import (
    FALLBACK,
    RESULT,
    job_name,
    read_result,
    record_problem,
)

COMPLETED = {
    "status": "completed",
    "config": {"model": {"name": "tiny"}, "dropout": {"name": "zaremba"}, "seed": 1},
    "best_val_ppl": 900.0,
    "final_val_ppl": 910.0,
    "test_ppl": 880.0,
    "final_train_ppl": 700.0,
    "test_protocol": "paper",
    "epochs": 2,
}


@pytest.mark.parametrize("name", ["dropout.name=a/b", "dropout.name=../../x", "x\0y", "..", "x" * 256])
def test_a_job_name_that_is_not_one_folder_is_refused(name):
    with pytest.raises(ValueError, match="job folder"):
        job_name(name)


def test_a_job_name_that_is_one_folder_is_kept():
    assert job_name("dropout.name=..,model=tiny") == "dropout.name=..,model=tiny"  # '..' inside a name is fine
    assert job_name("") == "default" and job_name("x" * 255) == "x" * 255


@pytest.mark.parametrize("field", ["status", "config", *records.COMPLETED_FIELDS])
def test_a_completed_record_without_a_field_it_needs_names_that_field(field):
    record = {k: v for k, v in COMPLETED.items() if k != field}
    assert field in record_problem(record)


@pytest.mark.parametrize(
    "change,named",
    [
        ({"config": "dropout=zaremba"}, "config is str"),
        ({"config": {"model": {"name": "tiny"}, "seed": 1}}, "config dropout.name is missing"),
        ({"test_ppl": "880"}, "test_ppl is str"),
        ({"epochs": 2.5}, "epochs is float"),
        ({"epochs": True}, "epochs is bool"),
        ({"status": "done"}, "status 'done'"),
        ({"error": ["x"]}, "error is list"),
    ],
)
def test_a_wrongly_typed_field_is_named(change, named):
    assert named in record_problem(COMPLETED | change)


def test_usable_records_pass_and_read_result_refuses_the_others(tmp_path):
    assert record_problem(COMPLETED) is None
    assert record_problem({"status": "failed", "config": COMPLETED["config"], "error": "x"}) is None
    (tmp_path / RESULT).write_text(json.dumps({"status": "completed"}))  # no config: not a result to reuse
    with pytest.raises(records.RecordError, match="it has no config; delete it to rerun"):
        read_result(tmp_path)


def test_a_final_record_that_cannot_be_written_leaves_the_job_failed_not_running(tmp_path, monkeypatch):
    records.start_record(tmp_path, {**COMPLETED, "status": "running"})
    assert read_result(tmp_path)["status"] == "running" and (tmp_path / FALLBACK).is_file()

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OSError):
        records.end_record(tmp_path, COMPLETED)
    monkeypatch.undo()
    ended = read_result(tmp_path)
    assert ended["status"] == "failed" and "could not be written" in ended["error"]
    records.start_record(tmp_path, {**COMPLETED, "status": "running"})
    records.end_record(tmp_path, COMPLETED)  # written: the fallback goes
    assert read_result(tmp_path)["status"] == "completed" and not (tmp_path / FALLBACK).exists()
