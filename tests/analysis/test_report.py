"""results + report on a real tiny sweep (2 placements x 2 seeds) plus a failed, a running and a missing job."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import matplotlib.image
import pandas as pd
import pytest
from omegaconf import OmegaConf
from scipy import stats

from tests.conftest import REPO
from tests.helpers import read_run
from zr_ablate.analysis.recipes import recipes
from zr_ablate.analysis.runs import RUN_COLUMNS, load_sweep, runs_from_wandb
from zr_ablate.dropout import CONNECTIONS
from zr_ablate.records import COMPLETED_FIELDS, EPOCH_FIELDS, RESULT

pytestmark = pytest.mark.slow  # its fixtures train sweeps in subprocesses

TABLES = ["perplexity", "gap", "status"]
FIGURES = ["val_curves", "train_vs_val", "test_ppl"]
FAILED, RUNNING, MISSING = (
    "dropout=none,model=tiny,seed=3",
    "dropout=zaremba,model=tiny,seed=3",
    "dropout=zaremba,model=tiny,seed=4",
)


def report(*args, **env):
    return subprocess.run(
        [sys.executable, "-m", "zr_ablate.report", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ | env,
    )


def unfinished_copy(sweep: Path, source: str, name: str, status: str) -> None:
    """A copy of a completed job that ended otherwise: no test ppl, and a val ppl no mean may include."""
    job = sweep / name
    shutil.copytree(sweep / source, job)
    result = json.loads((job / "result.json").read_text())
    del result["test_ppl"]
    result.update(status=status, final_val_ppl=10 * result["final_val_ppl"], error="RuntimeError: injected")
    result["config"]["seed"] = int(name.rsplit("=", 1)[1])
    (job / "result.json").write_text(json.dumps(result))
    curve = pd.read_csv(job / "epochs.csv")
    curve.head(1).to_csv(job / "epochs.csv", index=False)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, ptb_dir):
    out = tmp_path_factory.mktemp("out")
    cmd = [
        sys.executable,
        "run.py",
        "-m",
        "dropout=none,zaremba",
        "model=tiny",
        f"data.dir={ptb_dir}",
        "sweep=rep",
        f"out_root={out}",
        "trainer.enable_progress_bar=false",
        "seed=1,2",
        "threads=1",
    ]
    proc = subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=os.environ | {"WANDB_MODE": "disabled"}
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = out / "rep"
    unfinished_copy(sweep, "dropout=none,model=tiny,seed=1", FAILED, "failed")
    unfinished_copy(sweep, "dropout=zaremba,model=tiny,seed=1", RUNNING, "running")
    # A job killed between Hydra's start and its first result.json: only .hydra/ is there.
    hydra = sweep / MISSING / ".hydra"
    shutil.copytree(sweep / "dropout=zaremba,model=tiny,seed=1" / ".hydra", hydra)
    config = OmegaConf.load(hydra / "config.yaml")
    config.seed = 4
    OmegaConf.save(config, hydra / "config.yaml")
    return sweep


@pytest.fixture(scope="module")
def completed(sweep) -> pd.DataFrame:
    """The completed jobs' result.json files, read directly."""
    results = [json.loads(f.read_text()) for f in sweep.glob("*/result.json")]
    return pd.DataFrame(
        [dict(r, placement=r["config"]["dropout"]["name"]) for r in results if r["status"] == "completed"]
    )


@pytest.fixture(scope="module")
def out(sweep, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    (out / "notes.txt").write_text("mine")
    proc = report(sweep, "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_load_sweep_keeps_unfinished_jobs_with_their_status(sweep):
    runs, curves = load_sweep(sweep)
    assert list(runs.columns) == RUN_COLUMNS
    status = runs.set_index("job")["status"]
    assert status[FAILED] == "failed" and status[RUNNING] == "running" and status[MISSING] == "missing"
    assert (status.drop([FAILED, RUNNING, MISSING]) == "completed").all() and len(status) == 7
    assert runs.set_index("job").loc[MISSING, ["placement", "size", "seed"]].tolist() == ["zaremba", "tiny", 4]
    assert "no result.json" in runs.set_index("job").loc[MISSING, "error"]
    assert runs.set_index("job")["test_ppl"][[FAILED, RUNNING]].isna().all()
    per_job = curves.groupby("job")["epoch"].max()
    assert per_job[FAILED] == 1 and per_job[RUNNING] == 1 and MISSING not in per_job
    assert set(curves.loc[curves["job"] == RUNNING, "status"]) == {"running"}


def test_frames_carry_every_epoch_column_and_every_connection_rate(sweep):
    """The curves hold every column train writes to epochs.csv, the runs a rate per DropoutSpec connection."""
    runs, curves = load_sweep(sweep)
    header = next(sweep.glob("*/epochs.csv")).read_text().splitlines()[0].split(",")
    assert header == EPOCH_FIELDS and set(EPOCH_FIELDS) <= set(curves.columns)
    assert {f"{c}_p" for c in CONNECTIONS} <= set(runs.columns)
    assert runs.loc[runs["status"] == "completed", "embedding_p"].notna().all()


def test_report_writes_every_table_and_figure(out):
    for name in TABLES:
        assert (out / f"{name}.csv").stat().st_size > 0
        assert "\\toprule" in (out / f"{name}.tex").read_text()
    for name in FIGURES:
        assert (out / f"{name}.pdf").read_bytes().startswith(b"%PDF")
        height, width, _ = matplotlib.image.imread(out / f"{name}.png").shape
        assert height > 300 and width > 400
        assert f"]({name}.png)" in (out / "results.md").read_text()
    assert (out / "notes.txt").read_text() == "mine"  # a file the report did not write is left alone


def test_table_means_are_those_of_the_completed_runs(out, completed):
    table = pd.read_csv(out / "perplexity.csv").set_index("placement")
    expected = completed.groupby("placement").agg(
        runs=("test_ppl", "size"),
        val_ppl_mean=("final_val_ppl", "mean"),
        val_ppl_sd=("final_val_ppl", "std"),
        test_ppl_mean=("test_ppl", "mean"),
        test_ppl_sd=("test_ppl", "std"),
    )
    assert list(expected["runs"]) == [2, 2]
    pd.testing.assert_frame_equal(table[expected.columns].sort_index(), expected.sort_index(), check_dtype=False)
    assert table["published_source"].str.startswith("no published run with this recipe; nearest: ").all()
    gap = pd.read_csv(out / "gap.csv").set_index("placement")
    train = completed.groupby("placement")["final_train_ppl"].mean()
    assert gap["gap"].to_dict() == pytest.approx((expected["val_ppl_mean"] - train).to_dict())


def test_status_table_counts_every_job(out):
    status = pd.read_csv(out / "status.csv").set_index("placement")
    assert status.loc["none", ["completed", "failed", "running", "missing", "total"]].tolist() == [2, 1, 0, 0, 3]
    assert status.loc["zaremba", ["completed", "failed", "running", "missing", "total"]].tolist() == [2, 0, 1, 1, 4]


def test_markdown_says_which_runs_did_not_finish(out, sweep):
    md = (out / "results.md").read_text()
    assert "Not every run completed" in md and "Left out of every mean" in md
    failed = next(line for line in md.splitlines() if line.startswith("- failed"))
    assert FAILED in failed and "RuntimeError: injected" in failed
    assert RUNNING in next(line for line in md.splitlines() if line.startswith("- running"))
    assert MISSING in next(line for line in md.splitlines() if line.startswith("- missing"))
    assert f"Source: `{sweep}`" in md and "Test protocol: `paper`" in md
    assert f"python -m zr_ablate.report {sweep} --out {out}" in md


def fake_wandb_run(job: Path, flat_config: bool) -> SimpleNamespace:
    """What wandb.Api().runs() yields for a job logged by zr_ablate.experiment.wandb_run, built from its own files."""
    result = json.loads((job / "result.json").read_text())
    config = result.pop("config")
    if flat_config:
        config = pd.json_normalize(config).to_dict("records")[0]  # {"dropout.name": ...}
    state = {"completed": "finished", "failed": "failed", "running": "running"}[result["status"]]
    if result["status"] != "completed":
        del result["status"]  # wandb_run.end_run never ran: the summary does not say how the job ended
    rows, epochs = [], pd.read_csv(job / "epochs.csv")
    for e in epochs.itertuples():
        rows += [
            {"lr": e.lr},  # LearningRateMonitor, at the epoch's start, without an epoch key
            {"epoch": e.epoch - 1, "grad_norm": 1.0, "train_ppl_running": 1.0},  # Lightning counts from 0
            {"epoch": e.epoch - 1, "val_loss": e.val_loss, "val_ppl": e.val_ppl},
            {
                "epoch": e.epoch - 1,
                "train_loss": e.train_loss,
                "train_ppl": e.train_ppl,
                "tokens_per_s": e.tokens_per_s,
            },
        ]
    rows.append({"epoch": len(epochs), "test_ppl": result.get("test_ppl")})  # trainer.test, after the last epoch
    history = pd.DataFrame(rows).assign(_step=range(len(rows)))
    return SimpleNamespace(
        name=job.name,
        id=job.name[-8:],
        state=state,
        config=config,
        summary=result,
        history=lambda samples=500, pandas=True: history,
    )


def test_wandb_runs_give_the_same_frames_as_the_sweep_folder(sweep):
    runs, curves = load_sweep(sweep)
    jobs = sorted(p for p in sweep.iterdir() if (p / "result.json").exists())
    w_runs, w_curves = runs_from_wandb(fake_wandb_run(job, flat_config=i % 2 == 1) for i, job in enumerate(jobs))
    assert list(w_runs.columns) == list(runs.columns) and list(w_curves.columns) == list(curves.columns)
    logged = runs[runs["status"] != "missing"].reset_index(drop=True)
    pd.testing.assert_frame_equal(w_runs, logged, check_dtype=False)
    not_in_wandb = ["train_s", "elapsed_s"]  # epochs.csv timings that W&B history does not carry
    assert w_curves[not_in_wandb].isna().all().all()
    pd.testing.assert_frame_equal(
        w_curves.drop(columns=not_in_wandb), curves.drop(columns=not_in_wandb), check_dtype=False
    )


def test_wandb_flag_logs_an_aggregate_run_offline(sweep, tmp_path):
    proc = report(sweep, "--out", tmp_path, "--wandb", WANDB_MODE="offline")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = read_run(tmp_path)  # the report's folder holds its W&B run folder, as a job folder does
    assert run["job_type"] == "aggregate" and run["group"] == "rep"
    [logged] = run["history"]
    assert logged["table/perplexity._type"] == "table-file" and logged["table/perplexity.nrows"] == 2
    assert logged["table/status.nrows"] == 2
    assert all(logged[f"figure/{name}._type"] == "image-file" for name in FIGURES)


def test_an_unreadable_record_is_listed_and_the_report_goes_on(sweep, tmp_path):
    """A result.json cut short (a disk full, a hand edit): a warning names the file, the job is listed as
    unreadable, and every other job is reported as before."""
    copy = tmp_path / "sweep"
    shutil.copytree(sweep, copy)
    broken = copy / "dropout=none,model=tiny,seed=1" / "result.json"
    broken.write_text(broken.read_text()[:40])
    proc = report(copy, "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"warning: {broken} is not a readable result" in proc.stderr
    status = pd.read_csv(tmp_path / "out" / "status.csv")
    assert status["unreadable"].sum() == 1 and status["total"].sum() == len(load_sweep(sweep)[0])
    assert f"unreadable (1): `{broken.parent.name}` ({broken} is not a readable result" in (
        (tmp_path / "out" / "results.md").read_text()
    )


@pytest.mark.parametrize(
    "source,message",
    [
        ("{tmp}/nowhere", "is not a folder"),
        ("{tmp}", "holds no job folders"),
        ("{sweep}/dropout=none,model=tiny,seed=1", "is one job's folder; pass the sweep folder above it"),
        ("wandb:just-a-group", "expected ENTITY/PROJECT/GROUP"),
    ],
)
def test_bad_source_fails_with_one_line(sweep, tmp_path, source, message):
    proc = report(source.format(tmp=tmp_path, sweep=sweep), "--out", tmp_path / "report")
    assert proc.returncode != 0
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("zr_ablate.report: error:") and message in line
    assert not (tmp_path / "report").exists()


@pytest.mark.parametrize("where", ["a_file/report", "/proc/self"], ids=["under-a-file", "existing-unwritable"])
def test_unwritable_out_fails_with_one_line(sweep, tmp_path, where):
    """A folder that cannot be made, or one that exists but takes no files (also for root): one line."""
    (tmp_path / "a_file").write_text("")
    proc = report(sweep, "--out", tmp_path / where)
    assert proc.returncode != 0
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("zr_ablate.report: error: cannot ") and "pass a writable folder with --out" in line


def test_records_missing_a_field_or_of_the_wrong_type_are_unreadable_and_the_report_goes_on(sweep, out, tmp_path):
    """Records that parse but cannot be used: a completed record without each field it needs in turn, one
    whose config is a string, one whose test perplexity is text. Each is listed unreadable, naming the field;
    one that says completed with an infinite test perplexity counts as diverged; the tables are as before."""
    copy = tmp_path / "sweep"
    shutil.copytree(sweep, copy, ignore=shutil.ignore_patterns("checkpoints", "wandb"))
    record = json.loads((sweep / "dropout=none,model=tiny,seed=1" / "result.json").read_text())
    broken = {f"no-{field}": field for field in ["status", "config", *COMPLETED_FIELDS]}
    records = {name: {k: v for k, v in record.items() if k != field} for name, field in broken.items()}
    records |= {"config-a-string": record | {"config": "dropout=none"}, "test-ppl-text": record | {"test_ppl": "9"}}
    broken |= {"config-a-string": "config is str", "test-ppl-text": "test_ppl is str"}
    records["infinite-test-ppl"] = record | {"test_ppl": float("inf")}  # written as Infinity
    for name, content in records.items():
        (copy / name).mkdir()
        (copy / name / "result.json").write_text(json.dumps(content))
    runs = pd.read_csv(in_process_report(copy, tmp_path / "out") / "runs.csv").set_index("job")
    for name, field in broken.items():
        assert runs.loc[name, "status"] == "unreadable" and field in runs.loc[name, "error"], name
    assert (
        runs.loc["infinite-test-ppl", "status"] == "diverged"
        and "test_ppl=inf" in runs.loc["infinite-test-ppl", "error"]
    )
    assert (tmp_path / "out" / "perplexity.csv").read_text() == (out / "perplexity.csv").read_text()
    assert "unreadable (9)" in (tmp_path / "out" / "results.md").read_text()


# ---- variants, swept probabilities, MC: job folders fabricated from the tiny sweep's, not trained ----


def fabricate(source: Path, job: Path, config: dict, **record) -> None:
    """A copy of a completed job with config entries ({"dropout.p": 0.2}) and result.json fields replaced; its
    epochs.csv's val_ppl scaled so that the last epoch's is the new final_val_ppl."""
    shutil.copytree(source, job, ignore=shutil.ignore_patterns("checkpoints", "wandb"))
    result = json.loads((job / "result.json").read_text())
    cfg = OmegaConf.create(result["config"])
    for key, value in config.items():
        OmegaConf.update(cfg, key, value)
    curve = pd.read_csv(job / "epochs.csv")
    curve["val_ppl"] *= record.get("final_val_ppl", result["final_val_ppl"]) / result["final_val_ppl"]
    curve.to_csv(job / "epochs.csv", index=False)
    result.update(record, config=OmegaConf.to_container(cfg))
    (job / "result.json").write_text(json.dumps(result))


def rate(value: float, **connections) -> dict:
    """dropout.p and the connections that follow it (${dropout.p}) in the zaremba preset."""
    return (
        {f"dropout.{c}.p": value for c in ("embedding", "between", "output")}
        | {"dropout.p": value}
        | {f"dropout.{c}.p": v for c, v in connections.items()}
    )


def sensitivity_ppl(p: float, seed: int) -> float:
    return 1000 + 2000 * (p - 0.4) ** 2 + 10 * seed  # best at p = 0.4


@pytest.fixture(scope="module")
def swept_sweep(sweep, tmp_path_factory) -> Path:
    """zaremba at p = 0.2, 0.4, 0.6 x seeds 1, 2, and semeniuta sweeping its own cell_update.p at p = 0.5."""
    out = tmp_path_factory.mktemp("sens") / "sens"
    for seed in (1, 2):
        source = sweep / f"dropout=zaremba,model=tiny,seed={seed}"
        for p in (0.2, 0.4, 0.6):
            fabricate(
                source,
                out / f"dropout.p={p},dropout=zaremba,seed={seed}",
                rate(p),
                final_val_ppl=sensitivity_ppl(p, seed),
                test_ppl=sensitivity_ppl(p, seed) + 50,
            )
        for p in (0.1, 0.3):
            fabricate(
                source,
                out / f"dropout.cell_update.p={p},dropout=semeniuta,seed={seed}",
                {"dropout.name": "semeniuta", **rate(0.5, cell_update=p)},
                final_val_ppl=900 + 100 * p + seed,
            )
    return out


@pytest.fixture(scope="module")
def variant_sweep(sweep, tmp_path_factory) -> Path:
    """zaremba plain, +tied and +tied+word0.1; Gal's medium recipe (gal, with word dropout) with MC-dropout
    test perplexities."""
    out = tmp_path_factory.mktemp("variants") / "variants"
    source = sweep / "dropout=zaremba,model=tiny,seed=1"
    fabricate(source, out / "dropout=zaremba", {})
    fabricate(source, out / "dropout=zaremba,model.tie_weights=true", {"model.tie_weights": True})
    fabricate(
        source,
        out / "dropout.word.p=0.1,dropout=zaremba,model.tie_weights=true",
        {"model.tie_weights": True, "dropout.word.p": 0.1},
    )
    gal = recipes()["gal_medium_untied"]["settings"]  # every setting of Gal's medium recipe
    for seed, mc in ((1, 80.0), (2, 82.0)):
        fabricate(
            source,
            out / f"paper=gal_medium,seed={seed}",
            {"dropout.name": "gal", "model.name": "medium", "seed": seed, "eval.mc_samples": 10, **gal},
            mc_test_ppl=mc,
            mc_samples=10,
        )
    return out


@pytest.fixture(scope="module")
def claimed_sweep(sweep, tmp_path_factory) -> Path:
    """The tiny sweep's jobs relabelled model.name=medium (a claim, not the recipe), and the same jobs given
    every setting of Zaremba's medium recipe (a true match, numbers aside)."""
    out = tmp_path_factory.mktemp("claimed") / "claimed"
    zaremba = recipes()["zaremba_medium"]["settings"]
    for seed in (1, 2):
        for placement in ("none", "zaremba"):
            source = sweep / f"dropout={placement},model=tiny,seed={seed}"
            fabricate(source, out / f"dropout={placement},model.name=medium,seed={seed}", {"model.name": "medium"})
        source = sweep / f"dropout=zaremba,model=tiny,seed={seed}"
        fabricate(
            source,
            out / f"paper=medium,seed={seed}",
            {"model.name": "medium", "dropout.name": "zaremba_true", **zaremba},
        )
    return out


def test_a_tiny_run_claiming_medium_gets_no_published_number_only_a_recipe_match_does(claimed_sweep, tmp_path):
    out = in_process_report(claimed_sweep, tmp_path)
    table = pd.read_csv(out / "perplexity.csv").set_index("placement")
    published = ["published_val_ppl", "published_test_ppl", "test_minus_published"]
    assert table.loc[["none", "zaremba"], published].isna().all().all()
    for note in table.loc[["none", "zaremba"], "published_source"]:
        assert note.startswith("no published run with this recipe; nearest: ") and "model.hidden" in note
    true = table.loc["zaremba_true"]
    assert (true["published_val_ppl"], true["published_test_ppl"]) == (86.2, 82.7)
    assert true["published_source"].startswith("Zaremba 2014") and true["runs"] == 2
    md = (out / "results.md").read_text()
    assert md.count("| 82.7 |") == 1  # once, in the true match's row of the perplexity table


def in_process_report(sweep: Path, out: Path) -> Path:
    from zr_ablate.analysis.report.cli import main

    main([str(sweep), "--out", str(out)])
    return out


def test_variant_marks_tied_embeddings_and_word_dropout(variant_sweep, tmp_path):
    runs, curves = load_sweep(variant_sweep)
    assert list(runs.columns) == RUN_COLUMNS and set(runs["variant"]) <= set(curves["variant"])
    jobs = runs.set_index("job")
    assert jobs.loc["dropout=zaremba", "variant"] == "zaremba"
    assert jobs.loc["dropout=zaremba,model.tie_weights=true", "variant"] == "zaremba+tied"
    assert jobs.loc["dropout.word.p=0.1,dropout=zaremba,model.tie_weights=true", "variant"] == "zaremba+tied+word0.1"
    assert set(runs["placement"]) == {"zaremba", "gal"}  # the plain preset name stays
    assert (runs["p"] == 0.5).all() and jobs.loc["dropout=zaremba", "word_p"] == 0.0
    table = pd.read_csv(in_process_report(variant_sweep, tmp_path) / "perplexity.csv")
    assert table["placement"].tolist() == ["gal+word0.2", "zaremba", "zaremba+tied", "zaremba+tied+word0.1"]
    assert "p" not in table  # nothing varies p within a variant: no p column, one row each
    assert "`+tied` ties the input and output embeddings" in (tmp_path / "results.md").read_text()


def test_mc_column_sits_beside_gals_mc_value(variant_sweep, tmp_path):
    job = "paper=gal_medium,seed=2"
    runs, _ = load_sweep(variant_sweep)
    assert runs.set_index("job").loc[job, ["mc_test_ppl", "mc_samples"]].tolist() == [82.0, 10]
    logged = fake_wandb_run(variant_sweep / job, flat_config=True)
    del logged.summary["mc_samples"]  # W&B's summary has the logged mc_test_ppl; the passes are in the config
    assert runs_from_wandb([logged])[0].loc[0, ["mc_test_ppl", "mc_samples"]].tolist() == [82.0, 10]
    out = in_process_report(variant_sweep, tmp_path)
    table = pd.read_csv(out / "perplexity.csv").set_index(["size", "placement"])
    mc = table.loc[("medium", "gal+word0.2")]
    assert (mc["mc_test_ppl_mean"], mc["mc_samples"], mc["published_mc_samples"]) == (81.0, 10, 1000)
    # Gal's 78.6 averaged 1000 samples per token; 10 passes are not like for like: named, not set beside.
    assert pd.isna(mc["published_mc_test_ppl"]) and "(untied weights, MC)" in mc["published_mc_source"]
    assert mc["published_mc_source"].endswith("averaged 1000 samples per token, these runs 10 (990 fewer)")
    assert table[["mc_test_ppl_mean", "published_mc_samples"]].drop(("medium", "gal+word0.2")).isna().all().all()
    md = (out / "results.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| size | placement"))
    assert "| MC test ppl | MC passes |" in header and "| published MC test |" in header
    assert "| 81.0 ± 1.4 | 10 |" in md and "(990 fewer) |" in md and "78.6" not in md


@pytest.mark.parametrize("passes,published", [(10, None), (2000, 73.319), (5000, 73.319)])
def test_a_published_mc_number_stands_beside_a_run_only_at_its_sample_count(sweep, tmp_path, passes, published):
    """paper=gal_large (Gal's January 2017 re-run: 73.319 with 2000 samples per token), a stand-in run from
    the tiny sweep carrying every setting of that recipe and eval.mc_samples=passes."""
    gal = recipes()["gal_large_untied_2017"]["settings"]
    job = tmp_path / "gal" / "paper=gal_large"
    settings = {"dropout.name": "gal", "model.name": "large", "eval.mc_samples": passes, **gal}
    fabricate(sweep / "dropout=zaremba,model=tiny,seed=1", job, settings, mc_test_ppl=90.0, mc_samples=passes)
    table = pd.read_csv(in_process_report(job.parent, tmp_path / "report") / "perplexity.csv").iloc[0]
    assert table["published_test_ppl"] == 75.112  # the standard number: no samples to match
    assert "[word dropout per word type, the January 2017 fix]" in table["published_source"]
    if published is None:
        assert pd.isna(table["published_mc_test_ppl"])
        assert table["published_mc_source"].endswith("averaged 2000 samples per token, these runs 10 (1990 fewer)")
    else:
        assert table["published_mc_test_ppl"] == published and table["published_mc_samples"] == 2000


def test_a_recipe_run_without_mc_evaluation_gets_no_published_mc_number(sweep, tmp_path):
    """Beside another run's MC column, a paper=gal_large run that drew no MC samples is not set beside 73.319."""
    gal = recipes()["gal_large_untied_2017"]["settings"]
    folder = tmp_path / "gal"
    settings = {"dropout.name": "gal", "model.name": "large", **gal}
    fabricate(sweep / "dropout=zaremba,model=tiny,seed=1", folder / "paper=gal_large", settings)
    fabricate(sweep / "dropout=zaremba,model=tiny,seed=2", folder / "mc", {}, mc_test_ppl=90.0, mc_samples=10)
    table = pd.read_csv(in_process_report(folder, tmp_path / "report") / "perplexity.csv")
    [gal_row] = [row for _, row in table.iterrows() if row["placement"].startswith("gal")]
    assert pd.isna(gal_row["published_mc_test_ppl"]) and gal_row["published_test_ppl"] == 75.112
    assert gal_row["published_mc_source"].endswith(
        "averaged 2000 samples per token, these runs none (no eval.mc_samples)"
    )


def test_no_mc_column_without_mc_runs(out):
    assert not any("mc" in c for c in pd.read_csv(out / "perplexity.csv").columns)
    assert "MC test" not in (out / "results.md").read_text()


def test_tuned_beside_a_sweep_of_several_rates_is_one_line(sweep, swept_sweep, tmp_path):
    """A study's folder (a placement at many rates) given as --tuned, or as the source beside it, would put one
    rate's mean beside a mix of rates: refused before anything is written."""
    for args in ([sweep, "--tuned", swept_sweep], [swept_sweep, "--tuned", sweep]):
        proc = report(*args, "--out", tmp_path / "report")
        [line] = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and line.startswith("zr_ablate.report: error: --tuned sets one rate")
        assert f"{swept_sweep} holds a placement at several rates (dropout.p, dropout.cell_update.p)" in line
    assert not (tmp_path / "report").exists()


def test_swept_p_gets_one_row_per_value_and_a_sensitivity_figure(swept_sweep, tmp_path):
    out = in_process_report(swept_sweep, tmp_path)
    table = pd.read_csv(out / "perplexity.csv")
    assert table.columns[:4].tolist() == ["size", "placement", "p", "cell_update_p"]
    zaremba = table[table["placement"] == "zaremba"].set_index("p")
    assert zaremba.index.tolist() == [0.2, 0.4, 0.6] and (zaremba["runs"] == 2).all()
    assert zaremba["val_ppl_mean"].to_dict() == pytest.approx(
        {p: (sensitivity_ppl(p, 1) + sensitivity_ppl(p, 2)) / 2 for p in (0.2, 0.4, 0.6)}
    )
    semeniuta = table[table["placement"] == "semeniuta"]
    assert semeniuta["cell_update_p"].tolist() == [0.1, 0.3] and (semeniuta["p"] == 0.5).all()
    assert len(pd.read_csv(out / "gap.csv")) == len(pd.read_csv(out / "status.csv")) == 5
    md = (out / "results.md").read_text()
    assert "| size | placement | p | cell_update.p | completed runs |" in md
    assert "](sensitivity.png)" in md and "never a mean across them" in md
    for name in FIGURES + ["sensitivity"]:
        assert (out / f"{name}.pdf").read_bytes().startswith(b"%PDF")
        height, width, _ = matplotlib.image.imread(out / f"{name}.png").shape
        assert height > 300 and width > 400


def test_no_sensitivity_figure_when_nothing_is_swept(out):
    assert not (out / "sensitivity.png").exists() and "sensitivity" not in (out / "results.md").read_text()


def test_kept_runs_regenerate_the_same_report(sweep, tmp_path):
    """--keep-runs copies the records of every job, unfinished ones included, into OUT/runs/; a report
    made from that copy alone has the same tables."""
    first, again = tmp_path / "first", tmp_path / "again"
    proc = report(sweep, "--out", first, "--keep-runs")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (first / "runs" / MISSING / ".hydra" / "config.yaml").is_file()
    assert not (first / "runs" / MISSING / "result.json").exists()
    assert sorted(p.name for p in (first / "runs").iterdir()) == sorted(
        p.name for p in sweep.iterdir() if p.is_dir() and p.name[0] != "."
    )
    proc = report(first / "runs", "--out", again)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for table in [*TABLES, "wins", "wins_sentences"]:  # the per-sentence losses were kept too
        assert (again / f"{table}.csv").read_text() == (first / f"{table}.csv").read_text()
    title = (first / "results.md").read_text().splitlines()[0]
    assert title == f"# Dropout placement on PTB: {sweep.name}"  # named after the sweep, not after runs/
    assert (again / "results.md").read_text().splitlines()[0] == title
    # regenerating in place keeps the records (nothing copied onto itself)
    proc = report(first / "runs", "--out", first, "--keep-runs")
    assert proc.returncode == 0 and (first / "runs" / FAILED / "result.json").is_file()


def test_report_says_which_placement_wins_and_how_sure(sweep, tmp_path):
    """none - zaremba at tiny: across the 2 seeds both completed (a t interval), and per seed a paired
    bootstrap over the test sentences each job kept; a forest plot; with --tuned, the same for a second sweep
    and a table of it beside the first."""
    out = tmp_path / "report"
    from zr_ablate.analysis.report.cli import main

    main([str(sweep), "--out", str(out), "--tuned", str(sweep), "--keep-runs"])
    [pair] = pd.read_csv(out / "wins.csv").to_dict("records")
    runs = pd.read_csv(out / "runs.csv").query("status == 'completed'").set_index(["placement", "seed"])
    gaps = [runs.loc[("none", s), "test_ppl"] - runs.loc[("zaremba", s), "test_ppl"] for s in (1, 2)]
    assert (pair["a"], pair["b"], pair["seeds"]) == ("none", "zaremba", 2)
    assert pair["estimate"] == pytest.approx(sum(gaps) / 2) and pair["low"] < pair["estimate"] < pair["high"]
    per_seed = pd.read_csv(out / "wins_sentences.csv")
    assert per_seed["seed"].tolist() == [1, 2] and per_seed["estimate"].tolist() == pytest.approx(gaps)
    assert (per_seed["low"] < per_seed["estimate"]).all() and (per_seed["estimate"] < per_seed["high"]).all()
    assert matplotlib.image.imread(out / "wins.png").shape[0] > 100
    md = (out / "results.md").read_text()
    assert "## Which placement wins, and how sure (at the paper's rate)" in md and "| none - zaremba | 2 |" in md
    assert "## At tuned rates" in md and "## Which placement wins at tuned rates, and how sure" in md
    tuned = pd.read_csv(out / "tuned.csv").set_index("placement")
    assert tuned.loc["zaremba", "rates"] == "p 0.5" and tuned.loc["none", "rates"] == "none"
    assert tuned["change"].tolist() == [0.0, 0.0]  # the same sweep on both sides
    assert (out / "wins_tuned.csv").read_text() == (out / "wins.csv").read_text()
    job = "dropout=zaremba,model=tiny,seed=2"
    assert (out / "tuned" / "runs" / job / "sentences_test.csv").is_file()


def test_the_tuned_table_sets_each_placement_beside_its_own_setup_at_the_papers_rate(sweep, tmp_path):
    """A tuned sweep (zaremba at p 0.3, 5 lower on test, seeds 1 and 2) beside the tiny sweep at p 0.5; a
    tuned job of another setup (other epochs) has nothing at the paper's rate to stand beside."""
    tuned = tmp_path / "tuned"
    paper = {s: json.loads((sweep / f"dropout=zaremba,model=tiny,seed={s}" / RESULT).read_text()) for s in (1, 2)}
    for s in (1, 2):
        job = tuned / f"tuned=zaremba,seed={s}"
        fabricate(sweep / f"dropout=zaremba,model=tiny,seed={s}", job, rate(0.3), test_ppl=paper[s]["test_ppl"] - 5)
    longer = {**rate(0.3), "trainer.max_epochs": 3}
    fabricate(sweep / "dropout=none,model=tiny,seed=2", tuned / "tuned=none,seed=2", longer)
    from zr_ablate.analysis.report.cli import main

    main([str(sweep), "--out", str(tmp_path / "report"), "--tuned", str(tuned)])
    table = pd.read_csv(tmp_path / "report" / "tuned.csv").set_index("placement")
    assert table.loc["zaremba", ["rates", "seeds", "rates_paper"]].tolist() == ["p 0.3", 2, "p 0.5"]
    assert table.loc["zaremba", "change"] == pytest.approx(-5.0)
    assert pd.isna(table.loc["none", "test_mean_paper"]) and pd.isna(table.loc["none", "change"])


def test_memory_gain_is_compared_by_seed_where_the_probe_ran(sweep, tmp_path):
    """Probe files with known gains (none 100 + seed, zaremba 90 + 2 seed): none - zaremba is 9 and 8 by seed,
    8.5 across seeds, with a t interval, and the larger gain named where it is resolved."""
    source = tmp_path / "probed"
    jobs = [f"dropout={p},model=tiny,seed={s}" for p in ("none", "zaremba") for s in (1, 2)]
    for job in jobs:
        shutil.copytree(sweep / job, source / job, ignore=shutil.ignore_patterns("checkpoints", "wandb"))
    rows = [dict(job=j, placement=j.split(",")[0][8:], size="tiny", seed=int(j[-1]), split="test") for j in jobs]
    memory = pd.DataFrame(rows).assign(ppl_k1=300.0, k90="20")
    memory["memory_gain"] = [100 + r["seed"] if r["placement"] == "none" else 90 + 2 * r["seed"] for r in rows]
    memory["ppl_whole"] = memory["ppl_k1"] - memory["memory_gain"]
    (source / "probe").mkdir()
    memory.to_csv(source / "probe" / "memory.csv", index=False)
    probe = pd.concat([pd.DataFrame(rows).assign(k=k, ppl=300.0 - (k == "whole") * 90) for k in ("1", "whole")])
    probe.to_csv(source / "probe" / "probe.csv", index=False)
    pd.DataFrame(rows).assign(position=1, nll=5.0).to_csv(source / "probe" / "positions.csv", index=False)
    from zr_ablate.analysis.report.cli import main

    main([str(source), "--out", str(tmp_path / "report")])
    [row] = pd.read_csv(tmp_path / "report" / "wins_memory.csv").to_dict("records")
    assert (row["a"], row["b"], row["seeds"], row["estimate"]) == ("none", "zaremba", 2, pytest.approx(8.5))
    low, high = stats.ttest_1samp([9.0, 8.0], 0.0).confidence_interval(0.95)
    assert (row["low"], row["high"]) == pytest.approx((low, high)) and row["verdict"] == "resolved"
    md = (tmp_path / "report" / "wins_memory.md").read_text()
    assert f"| tiny | none - zaremba | 2 | +8.5 [{low:+.1f}, {high:+.1f}] | resolved | none |" in md


def test_studies_section_counts_what_each_study_trained_and_regenerates_from_its_trials(sweep, tmp_path):
    """A study of p: 0.3 (280) and 0.4 (281, within 1%) completed, 0.3 proposed again (a repeat), 0.5
    failed, 0.7 diverged (inf); a second study of two rates. Counted as such, best p 0.3, and the same
    table again from the report's own trials.csv; a storage that is not there is one line."""
    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    storage = f"sqlite:///{tmp_path}/studies.db"
    space = {"dropout.p": FloatDistribution(0.05, 0.7, step=0.05)}
    study = optuna.create_study(study_name="naive-tiny", storage=storage)
    for p, value, state, attrs in [
        (0.3, 280.0, TrialState.COMPLETE, {}),
        (0.4, 281.0, TrialState.COMPLETE, {}),
        (0.30000000000000004, None, TrialState.FAIL, {"repeat_of": 0}),
        (0.5, None, TrialState.FAIL, {}),
        (0.7, math.inf, TrialState.COMPLETE, {}),
    ]:
        study.add_trial(
            create_trial(params={"dropout.p": p}, distributions=space, value=value, state=state, user_attrs=attrs)
        )
    other = optuna.create_study(study_name="zaremba-tiny", storage=storage)
    for p, value in [(0.45, 278.0), (0.3, 290.0)]:
        other.add_trial(create_trial(params={"dropout.p": p}, distributions=space, value=value))
    from zr_ablate.analysis.report.cli import main

    main([str(sweep), "--out", str(tmp_path / "r"), "--studies", f"{tmp_path}/studies.db"])
    table = pd.read_csv(tmp_path / "r" / "studies.csv").set_index("study")
    naive = table.loc["naive-tiny"]
    assert naive[["trained", "repeats", "failed", "diverged", "best_value"]].tolist() == [3, 1, 1, 1, 280.0]
    assert (naive["best_rates"], naive["near_best"]) == ("p 0.3", "p 0.4 (281.0)")
    assert table.loc["zaremba-tiny", ["trained", "best_rates"]].tolist() == [2, "p 0.45"]
    assert "## The tuning studies" in (tmp_path / "r" / "results.md").read_text()
    assert (tmp_path / "r" / "studies.png").is_file()
    main([str(sweep), "--out", str(tmp_path / "again"), "--studies", str(tmp_path / "r" / "trials.csv")])
    assert (tmp_path / "again" / "studies.csv").read_text() == (tmp_path / "r" / "studies.csv").read_text()
    for missing in ("nothing.db", "trials.csv"):
        proc = report(sweep, "--studies", tmp_path / missing, "--out", tmp_path / "no")
        [line] = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and line.startswith("zr_ablate.report: error: no study storage at")
