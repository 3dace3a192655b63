"""Per-sentence test losses (records.SENTENCES): written by the job under the paper protocol, they give back
its test perplexity, and MC-dropout's too."""

import math

import pandas as pd
import pytest

from tests.helpers import tiny_lm
from zr_ablate.data import EOS
from zr_ablate.dropout import Connection, DropoutSpec
from zr_ablate.records import SENTENCE_FIELDS, SENTENCES
from zr_ablate.training.job import run_job
from zr_ablate.training.lightning_module import LMModule

TRAINER = dict(max_epochs=1, enable_progress_bar=False, enable_model_summary=False)


def job(ptb_dir, tmp_path, protocol: str, mc_samples: int = 0):
    spec = DropoutSpec(embedding=Connection(0.3, "sequence"), output=Connection(0.3, "sequence"))
    dm, plain = tiny_lm(ptb_dir, spec, test_protocol=protocol, train_tokens=600, eval_tokens=400)
    eos = dm.vocab.stoi[EOS]
    schedule = dict(lr=1.0, lr_decay=2.0, decay_after=1, clip=5.0)
    module = LMModule(plain.model, **schedule, mc_samples=mc_samples, sentence_end=eos)
    result = run_job(module, dm, str(tmp_path), TRAINER, config={}, test_protocol=protocol)
    return dm, eos, result


def test_sentence_sums_give_back_the_test_perplexity_and_mc_perplexity(ptb_dir, tmp_path):
    dm, eos, result = job(ptb_dir, tmp_path, "paper", mc_samples=2)
    rows = pd.read_csv(tmp_path / SENTENCES)
    assert list(rows.columns) == SENTENCE_FIELDS
    # The sentences, counted from the stream itself: predicted tokens up to each <eos>, the last one open.
    targets = dm.tokens["test"][1:].tolist()
    lengths, run = [], 0
    for t in targets:
        run += 1
        if t == eos:
            lengths.append(run)
            run = 0
    lengths += [run] if run else []
    assert rows["tokens"].tolist() == lengths and len(lengths) > 10
    # Two ways to the perplexity: the metric over windows (result.json) and the file's sums.
    tokens = rows["tokens"].sum()
    assert math.isclose(math.exp(rows["nll"].sum() / tokens), result["test_ppl"], rel_tol=1e-12)
    assert math.isclose(math.exp(rows["mc_nll"].sum() / tokens), result["mc_test_ppl"], rel_tol=1e-12)
    assert result["mc_test_ppl"] != pytest.approx(result["test_ppl"], rel=1e-6)  # really the MC losses


def test_no_sentence_file_when_the_test_split_runs_as_parallel_streams(ptb_dir, tmp_path):
    (tmp_path / SENTENCES).write_text("tokens,nll,mc_nll\n3,1.0,\n")  # left by an earlier run in this folder
    _, _, result = job(ptb_dir, tmp_path, "fast")
    assert result["status"] == "completed" and not (tmp_path / SENTENCES).exists()
