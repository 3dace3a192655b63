"""The W&B dashboards, built offline and checked as specs: what each panel shows, how runs are grouped and
filtered, and what a sweep over a rate adds."""

import json

import pandas as pd
import pytest
import wandb_workspaces.reports.v2 as wr

from zr_ablate.analysis import dashboard


def metrics(panel) -> list[str]:
    if isinstance(panel, wr.LinePlot):
        return list(panel.y)
    if isinstance(panel, wr.BarPlot):
        return [m.name for m in panel.metrics]
    return [c.metric.name for c in panel.columns]


def test_the_workspace_view_groups_the_sweeps_runs_by_placement():
    view = dashboard.workspace("me", "zr_ablate", "demo", [])
    spec = view._to_model().model_dump(mode="json", by_alias=True, exclude_none=True)
    [runset] = spec["spec"]["section"]["runSets"]
    panels = view.sections[0].panels
    assert [metrics(p) for p in panels] == [["val_ppl"], ["test_ppl"], ["train_ppl", "val_ppl"], ["grad_norm"]]
    assert all(p.groupby == "dropout.name" and p.groupby_rangefunc == "stddev" for p in panels)
    assert panels[0].x == "epoch" and panels[3].x == "Step"
    # the view shows only this sweep's training runs, grouped by placement (W&B's key for config dropout.name)
    filters = {(f["key"]["name"], f["op"], f["value"]) for f in runset["filters"]["filters"]}
    assert filters == {("group", "=", "demo"), ("jobType", "=", "train")}
    assert runset["grouping"] == [{"section": "config", "name": "dropout.value.name"}]
    assert view.entity == "me" and view.project == "zr_ablate"


def test_a_sweep_over_a_rate_adds_a_parallel_coordinates_panel(tmp_path):
    runs = pd.DataFrame({"p": [0.1, 0.3, 0.5], "recurrent_p": [0.1, 0.3, 0.5], "cell_update_p": [0.0] * 3})
    (tmp_path / "results.md").write_text("# report")
    runs.to_csv(tmp_path / "runs.csv", index=False)
    rates = dashboard.swept_rates(tmp_path)
    assert rates == ["dropout.p", "dropout.recurrent.p"]  # cell_update does not vary
    last = dashboard.panels(rates)[-1]
    assert isinstance(last, wr.ParallelCoordinatesPlot)
    assert metrics(last) == ["dropout.p", "dropout.recurrent.p", "best_val_ppl", "test_ppl"]


def test_the_report_carries_the_panels_and_the_perplexity_table():
    table = "| size | placement | test ppl |\n| --- | --- | --- |\n| demo | zaremba | 268.6 |"
    doc = dashboard.report("me", "zr_ablate", "demo", [], table)
    grid = next(b for b in doc.blocks if isinstance(b, wr.PanelGrid))
    assert grid.runsets[0].filters == "Group = 'demo'" and grid.runsets[0].groupby == ["dropout.name"]
    assert [metrics(p) for p in grid.panels] == [metrics(p) for p in dashboard.panels([])]
    assert any(isinstance(b, wr.MarkdownBlock) and "268.6" in b.text for b in doc.blocks)


def test_the_command_builds_offline_and_saving_needs_an_entity(tmp_path, capsys):
    dashboard.main(["--group", "demo"])
    out = capsys.readouterr()
    assert json.loads(out.out)["project"] == "zr_ablate" and "built offline" in out.err
    with pytest.raises(SystemExit):
        dashboard.main(["--group", "demo", "--save"])
    assert "--save needs --entity" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="holds no results.md"):
        dashboard.main(["--group", "demo", "--report", str(tmp_path)])
