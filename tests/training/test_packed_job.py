"""A packed group's jobs end as their solo jobs would (training/packed_job.run_packed, float64 on a PTB slice):
each folder gets its record, curve, per-sentence test losses and checkpoint; a member whose loss blows up is
recorded diverged and the others end with the numbers they get alone."""

import json
import math

import pandas as pd
import pytest
import torch

from tests.helpers import ptb_slice, tiny_lm
from zr_ablate.bench.workload import settings
from zr_ablate.dropout import DropoutSpec
from zr_ablate.experiment.build import model as build_model
from zr_ablate.model.language_model import LSTMLanguageModel
from zr_ablate.model.packed import PackedLM
from zr_ablate.records import EPOCH_FIELDS, SENTENCES
from zr_ablate.training.job import run_job
from zr_ablate.training.packed_job import MemberJob, Schedule, run_packed

SCHEDULE = Schedule(
    lr=1.0, lr_decay=2.0, decay_after=1, clip=5.0, weight_decay=0.0, max_epochs=2, test_protocol="paper",
    mc_samples=2, check_every=20, limits={"train": 30, "val": 10, "test": 40},
)  # fmt: skip


@pytest.fixture(scope="module")
def data(ptb_dir):
    dm = ptb_slice(ptb_dir, bptt=5, train_tokens=3000, eval_tokens=600)
    dm.setup()
    return dm


def group(tmp_path, data, members, corrupt: int | None = None) -> dict[str, dict]:
    """run_packed on the members (placement, seed) in float64; member `corrupt` gets a NaN in its softmax."""
    torch.set_default_dtype(torch.float64)
    try:
        models = [build_model(settings("tiny", p, "auto", (f"seed={s}",)), len(data.vocab)) for p, s in members]
        packed = PackedLM(models)
    finally:
        torch.set_default_dtype(torch.float32)
    if corrupt is not None:
        with torch.no_grad():
            packed.decoder.bias[corrupt, 0] = float("nan")
    jobs = [MemberJob(f"{p}-{s}", tmp_path / f"{p}-{s}", {"dropout": p, "seed": s}) for p, s in members]
    results = run_packed(packed, data, jobs, SCHEDULE, torch.device("cpu"))
    return {job.name: result for job, result in zip(jobs, results)}


def test_each_member_folder_is_written_as_a_solo_job_writes_it(tmp_path, data):
    members = [("naive", 1), ("variational", 2)]
    results = group(tmp_path, data, members)
    for name, result in results.items():
        job = tmp_path / name
        assert json.loads((job / "result.json").read_text()) == json.loads(json.dumps(result, default=str))
        assert result["status"] == "completed" and result["epochs"] == 2 and result["mc_samples"] == 2
        assert result["packed_with"] == [n for n in results if n != name]
        curve = pd.read_csv(job / "epochs.csv")
        assert list(curve.columns) == EPOCH_FIELDS and list(curve.epoch) == [1, 2] and list(curve.lr) == [1.0, 0.5]
        assert result["best_val_ppl"] == curve.val_ppl.min() and result["final_train_ppl"] == curve.train_ppl.iloc[-1]
        # Its test sentences (one stream at batch 1) sum back to its own test and MC-dropout perplexities.
        sentences = pd.read_csv(job / SENTENCES)
        assert sentences.tokens.sum() == 40 * 5 and (sentences.tokens > 0).all()
        for column, key in (("nll", "test_ppl"), ("mc_nll", "mc_test_ppl")):
            assert math.exp(sentences[column].sum() / sentences.tokens.sum()) == pytest.approx(result[key], rel=1e-12)
        # The checkpoint is a solo model's: the context probe's way of loading it gives that member's weights.
        saved = torch.load(job / "checkpoints" / "last.ckpt", weights_only=False)
        assert saved["epoch"] == 1 and saved["packed_with"] == result["packed_with"]
        solo = LSTMLanguageModel(len(data.vocab), 16, 2, DropoutSpec(), init_scale=0.1)
        solo.load_state_dict({k.removeprefix("model."): v for k, v in saved["state_dict"].items()})
    a, b = (results[f"{p}-{s}"] for p, s in members)
    assert a["test_ppl"] != b["test_ppl"] and a["mc_test_ppl"] != b["mc_test_ppl"]


def test_a_member_that_diverges_is_recorded_and_the_others_end_as_alone(tmp_path, data):
    members = [("naive", 1), ("zaremba", 2), ("variational", 3)]
    results = group(tmp_path / "packed", data, members, corrupt=1)
    bad = results["zaremba-2"]
    assert bad["status"] == "diverged" and "nan nats/token at epoch 1 step 20" in bad["error"]
    assert bad["epochs"] == 0 and bad.get("test_ppl") is None
    assert not (tmp_path / "packed" / "zaremba-2" / "checkpoints").exists()
    for m in (0, 2):
        alone = group(tmp_path / f"alone{m}", data, [members[m]])
        name = f"{members[m][0]}-{members[m][1]}"
        for key in ("best_val_ppl", "final_train_ppl", "test_ppl", "mc_test_ppl"):
            assert results[name][key] == pytest.approx(alone[name][key], rel=1e-10), key
        assert results[name]["status"] == "completed"


def test_a_member_checkpoint_is_not_resumed_by_a_solo_job(tmp_path, data, ptb_dir):
    """A packed member's checkpoint holds no Trainer state: a solo rerun says how to resume it instead of
    starting Lightning from it."""
    group(tmp_path, data, [("naive", 1)])
    job = tmp_path / "naive-1"
    (job / "result.json").unlink()
    dm, module = tiny_lm(ptb_dir)
    with pytest.raises(RuntimeError, match="written by a packed sweep; rerun with hydra/launcher=packed"):
        run_job(module, dm, str(job), {"max_epochs": 1, "enable_progress_bar": False}, {}, "paper")
    assert json.loads((job / "result.json").read_text())["status"] == "failed"
