"""run.py end to end, as a user runs it: real processes, real PTB, the tiny profile."""

import json
import subprocess
import sys

import pandas as pd
import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow  # every test runs run.py in a subprocess

PLACEMENTS = ["none", "naive", "zaremba", "variational"]


def run(tmp_path, *args, check=True, multirun=False):
    cmd = [
        sys.executable,
        "run.py",
        *(["-m"] if multirun else []),
        f"out_root={tmp_path}",
        "model=tiny",
        "trainer.enable_progress_bar=false",
        *args,
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed:\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, ptb_dir):
    out = tmp_path_factory.mktemp("out")
    run(out, f"dropout={','.join(PLACEMENTS)}", f"data.dir={ptb_dir}", "sweep=four", multirun=True)
    return out / "four"


def test_multirun_makes_one_named_job_folder_per_placement(sweep):
    names = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert names == sorted(f"dropout={p},model=tiny" for p in PLACEMENTS)


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_each_job_writes_its_result_and_epoch_curve(sweep, placement):
    job = sweep / f"dropout={placement},model=tiny"
    result = json.loads((job / "result.json").read_text())
    assert result["status"] == "completed"
    assert result["config"]["dropout"]["name"] == placement
    assert result["test_protocol"] == "paper" and result["test_ppl"] > 1
    assert result["epochs"] == 2 and result["n_params"] == 2 * 10_000 * 16 + 10_000 + 2 * (4 * 16 * 32 + 8 * 16)
    assert result["wall_time_s"] > 0 and result["tokens_per_s"] > 0
    curve = pd.read_csv(job / "epochs.csv")
    assert list(curve["epoch"]) == [1, 2] and list(curve["lr"]) == [1.0, 0.5]
    assert result["best_val_ppl"] == pytest.approx(curve["val_ppl"].min())
    assert result["final_train_ppl"] == pytest.approx(curve["train_ppl"].iloc[-1])


def test_placements_really_differ(sweep):
    vals = {
        p: json.loads((sweep / f"dropout={p},model=tiny" / "result.json").read_text())["best_val_ppl"]
        for p in PLACEMENTS
    }
    assert len(set(vals.values())) == 4


def test_same_seed_same_result_in_the_same_folder(tmp_path, ptb_dir, sweep):
    """A rerun lands in the folder of the same name and reproduces the numbers."""
    run(sweep.parent, "dropout=zaremba", f"data.dir={ptb_dir}", "sweep=four")
    job = sweep / "dropout=zaremba,model=tiny"
    again = json.loads((job / "result.json").read_text())
    assert again["status"] == "completed"
    assert len(list(sweep.iterdir())) == len(PLACEMENTS) + 1  # + multirun.yaml, no new folder
    assert again["best_val_ppl"] == pytest.approx(
        json.loads((sweep / "dropout=zaremba,model=tiny" / "result.json").read_text())["best_val_ppl"]
    )


NO_CONFIG = {"status": "completed"}  # a record that says nothing of the settings it was made with


@pytest.mark.parametrize(
    "args,message,planted",
    [
        (["dropout.p=1.2"], "dropout probability must be in [0, 1)", None),
        (["dropout.recurrent.mask=sometimes"], "dropout mask must be one of", None),
        (["data.bptt=600", "data.train_tokens=2000"], "unroll 600 is longer", None),
        (["data.dir=/nonexistent/ptb"], "missing PTB split file /nonexistent/ptb/ptb.train.txt", None),
        (
            ["data.test_protocol=quick"],
            "data.test_protocol='quick' is out of range: it must be one of paper, fast",
            None,
        ),
        (["data.batch_size=0"], "data.batch_size=0 is out of range: it must be an integer >= 1", None),
        (["trainer.max_epochs=0"], "trainer.max_epochs=0 is out of range: it must be an integer >= 1", None),
        # an unknown key, with `+` (which Hydra adds to any node) or without (Hydra's error, in one line)
        (["+model.hiden=32"], "unknown setting model.hiden (did you mean model.hidden?)", None),
        (["model.hiden=32"], "unknown setting model.hiden (did you mean model.hidden?)", None),
        (["optim.lr=nan"], "optim.lr=nan is out of range: it must be a finite number, > 0", None),
        (["seed=abc"], "seed=abc (Value 'abc' of type 'str' could not be converted to Integer)", None),
        (["dropout=gaal"], "there is no dropout=gaal (did you mean dropout=gal?); pass one of dropout=gal,", None),
        # a job folder or sweep name that would not be one folder inside out_root/<sweep>/
        (["dropout.name=../../x"], "'dropout.name=../../x,model=tiny' is not one folder's name", None),
        (["sweep=../.."], "sweep=../..: '../..' is not one folder's name inside the sweep folder", None),
        ([f"dropout.name={'x' * 300}"], "bytes, more than the 255 a file name may have", None),
        (
            ["-m", "dropout=none,zaremba", "dropout.name=a/b"],
            "dropout=none,dropout.name=a/b: job folder 'dropout.name=a/b,dropout=none,model=tiny' is not",
            None,
        ),
        # a completed record without its config: never silently reused (the stale-settings check needs it)
        ([], "model=tiny/result.json is not a usable result: it has no config; delete it to rerun", NO_CONFIG),
    ],
)
def test_bad_settings_fail_at_start_with_one_line(tmp_path, ptb_dir, args, message, planted):
    """Each bad input: one line on stderr naming the fix, no traceback, and nothing trained or written."""
    out = tmp_path / "out"
    if planted:
        (out / "adhoc" / "model=tiny").mkdir(parents=True)
        (out / "adhoc" / "model=tiny" / "result.json").write_text(json.dumps(planted))
    multirun = args[:1] == ["-m"]
    proc = run(out, f"data.dir={ptb_dir}", *args[multirun:], check=False, multirun=multirun)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("zr_ablate: error:") and message in line, line
    assert [json.loads(p.read_text()) for p in tmp_path.rglob("result.json")] == ([planted] if planted else [])
    assert {p.name for p in tmp_path.iterdir()} <= {"out"}  # nothing written beside out_root (../..)
    assert not list(tmp_path.rglob("epochs.csv"))


@pytest.mark.parametrize("multirun", [False, True], ids=["run", "multirun"])
@pytest.mark.parametrize("where", ["a-file", "/proc/zr_ablate"])
def test_an_output_folder_that_cannot_be_written_is_one_line(tmp_path, ptb_dir, where, multirun):
    """out_root an existing file, or somewhere nothing can be created: one line before Hydra makes a folder."""
    out = tmp_path / where if where == "a-file" else where
    if where == "a-file":
        out.write_text("not a folder")
    cmd = [
        sys.executable,
        "run.py",
        *(["-m"] if multirun else []),
        f"out_root={out}",
        "model=tiny",
        f"data.dir={ptb_dir}",
        "logger.mode=disabled",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    [line] = [x for x in proc.stderr.splitlines() if x.startswith("zr_ablate: error:")]
    assert f"cannot write job folders in {out}/adhoc" in line and "pass out_root=" in line


def test_address_overrides_stay_out_of_the_job_folder_name(tmp_path, ptb_dir, file_urls):
    """data.urls.* cannot change the numbers (the files are checksummed): an http:// address in the folder
    name would split it into folders."""
    run(
        tmp_path,
        f"data.cache_dir={tmp_path / 'cache'}",
        f"data.urls.train={file_urls['train']}",
        "logger.mode=disabled",
        "trainer.max_epochs=1",
    )
    assert [p.name for p in (tmp_path / "adhoc").iterdir()] == ["model=tiny,trainer.max_epochs=1"]


def test_make_demo_ends_in_a_report_on_a_quiet_console(tmp_path, ptb_dir):
    """make demo, on the tiny profile: the console holds the epoch lines, the sweep's summary and table, and
    the report's path; no Lightning tip, deprecation warning, srun hint or W&B banner."""
    proc = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "demo",
            f"PTB_DIR={ptb_dir}",
            f"DEMO_OUT={tmp_path}",
            "DEMO_ARGS=model=tiny trainer.max_epochs=1 logger.mode=offline",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    console = proc.stdout + proc.stderr
    assert proc.returncode == 0, console[-3000:]
    report = tmp_path / "demo" / "report"
    assert f"report: {report / 'results.md'}" in console
    assert (report / "results.md").is_file() and (report / "val_curves.png").is_file()
    assert "| tiny | zaremba | 1 | completed |" in console  # the compact table, after the sweep and the report
    assert "4 completed, 0 diverged, 0 failed, 0 skipped" in console
    for noise in ("Tip:", "LeafSpec", "srun", "wandb:", "Run summary", "does not have many workers"):
        assert noise not in console, noise
    assert console.count("epoch 1:") == 4


def test_gals_presets_train_on_tiny_sizes_with_their_recipe_recorded(tmp_path, ptb_dir):
    """paper=gal_medium and gal_large (untied masks, word dropout, weight decay, MC test) at tiny sizes: each
    job completes with an MC test perplexity, records Gal's settings, and (being tiny) follows no recipe."""
    from zr_ablate.analysis.runs import load_sweep

    run(
        tmp_path,
        "paper=gal_medium,gal_large",
        "trainer.max_epochs=1",
        "eval.mc_samples=2",
        f"data.dir={ptb_dir}",
        "sweep=gal",
        multirun=True,
    )
    for paper, word_p, after in (("gal_medium", 0.2, 1), ("gal_large", 0.3, 11)):
        [job] = (tmp_path / "gal").glob(f"*paper={paper},*")
        result = json.loads((job / "result.json").read_text())
        assert result["status"] == "completed" and result["mc_test_ppl"] > 1 and result["mc_samples"] == 2
        config = result["config"]
        assert config["optim"]["weight_decay"] == 1e-7 and config["optim"]["decay_after"] == after
        assert config["dropout"]["word"]["p"] == word_p and config["dropout"]["recurrent"]["gates"] == "untied"
    runs, _ = load_sweep(tmp_path / "gal")
    assert runs["recipe"].isna().all() and runs["recipe_note"].str.contains("nearest: Gal & Ghahramani").all()
