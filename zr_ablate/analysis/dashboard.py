"""W&B dashboards as code: a saved workspace view and a W&B Report for one sweep (a project and a group).

    python -m zr_ablate.dashboard --group demo                       # build both, print the workspace spec
    python -m zr_ablate.dashboard --group demo --report reports/demo --save --entity ENTITY

Every job is a W&B run (zr_ablate/experiment/wandb_run.py) in the sweep's group, with the resolved config (placement:
`dropout.name`, size: `model.name`), epoch metrics (train_ppl, val_ppl, lr, tokens_per_s), the gradient
norm on logging steps and the record in the summary (best_val_ppl, test_ppl, ...). The views show, grouped
by placement with seed bands: validation perplexity per epoch, test perplexity per placement, train
against validation, the gradient norm, and where the sweep varies a rate, a parallel-coordinates panel
(rate -> best validation -> test). The Report adds the report's perplexity table, beside the published
numbers, as text.

Built offline from wandb-workspaces' models. `--save` creates them on W&B, which needs a login and a
network; without it nothing leaves the machine and the workspace's spec is printed (the Report's backend
spec needs the W&B API to resolve the project, so offline it is checked as objects, tests/analysis/test_dashboard.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import wandb_workspaces.reports.v2 as wr
import wandb_workspaces.workspaces as ws

PLACEMENT, SIZE = "dropout.name", "model.name"
# A sweep over one rate shows it as a config column: dropout.p, or a connection's own (dropout.<c>.p).
RATE_KEYS = ["dropout.p", *(f"dropout.{c}.p" for c in ("recurrent", "cell_update", "weight_hh", "zoneout_c"))]


def panels(rates: list[str]) -> list:
    """The panels both views share."""
    grouped = dict(groupby=PLACEMENT, groupby_aggfunc="mean", groupby_rangefunc="stddev")
    shown = [
        wr.LinePlot(title="validation perplexity per epoch", x="epoch", y=["val_ppl"], log_y=True, **grouped),
        wr.BarPlot(title="test perplexity (paper protocol)", metrics=[wr.SummaryMetric("test_ppl")], **grouped),
        wr.LinePlot(
            title="train vs validation perplexity", x="epoch", y=["train_ppl", "val_ppl"], log_y=True, **grouped
        ),
        wr.LinePlot(title="gradient norm before clipping", x="Step", y=["grad_norm"], log_y=True, **grouped),
    ]
    if rates:
        columns = [wr.ParallelCoordinatesPlotColumn(metric=wr.Config(rate)) for rate in rates]
        columns += [wr.ParallelCoordinatesPlotColumn(metric=wr.SummaryMetric(m)) for m in ("best_val_ppl", "test_ppl")]
        shown.append(wr.ParallelCoordinatesPlot(title="rate -> perplexity", columns=columns))
    return shown


def workspace(entity: str, project: str, group: str, rates: list[str]) -> ws.Workspace:
    """A saved view of the project filtered to the sweep's group, runs grouped by placement."""
    return ws.Workspace(
        entity=entity,
        project=project,
        name=f"zr_ablate: {group}",
        sections=[ws.Section(name=f"{group}: dropout placements", panels=panels(rates), is_open=True)],
        runset_settings=ws.RunsetSettings(
            filters=[ws.Metric("Group") == group, ws.Metric("JobType") == "train"],
            groupby=[ws.Config(PLACEMENT)],
        ),
    )


def report(entity: str, project: str, group: str, rates: list[str], table: str | None) -> wr.Report:
    """A W&B Report: the same panels over the sweep's runs, and the report's table as text."""
    runset = wr.Runset(entity=entity, project=project, name=group, filters=f"Group = '{group}'", groupby=[PLACEMENT])
    blocks = [
        wr.H1(f"Dropout placement on PTB: {group}"),
        wr.P("Each run is one job of the sweep; lines are the mean over seeds, bands one standard deviation."),
        wr.PanelGrid(runsets=[runset], panels=panels(rates)),
    ]
    if table:
        blocks += [wr.H2("Perplexity per placement, beside the published numbers"), wr.MarkdownBlock(text=table)]
    return wr.Report(project=project, entity=entity, title=f"zr_ablate: {group}", blocks=blocks)


def swept_rates(report_dir: Path | None) -> list[str]:
    """The rates a sweep varies, read off the report's runs.csv (a column with more than one value)."""
    if report_dir is None or not (report_dir / "runs.csv").is_file():
        return []
    import pandas as pd

    runs = pd.read_csv(report_dir / "runs.csv")
    columns = {
        "dropout.p": "p",
        **{f"dropout.{c}.p": f"{c}_p" for c in ("recurrent", "cell_update", "weight_hh", "zoneout_c")},
    }
    return [key for key in RATE_KEYS if columns[key] in runs and runs[columns[key]].nunique() > 1]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m zr_ablate.dashboard", description=__doc__.split("\n")[0])
    p.add_argument("--group", required=True, help="the sweep's name: its W&B group")
    p.add_argument("--project", default="zr_ablate")
    p.add_argument("--entity", default=None, help="W&B entity (needed with --save)")
    p.add_argument(
        "--report",
        type=Path,
        default=None,
        help="a report folder (python -m zr_ablate.report): its table goes into the W&B Report, its "
        "runs.csv says which rate the sweep varies",
    )
    p.add_argument("--save", action="store_true", help="create the view and the Report on W&B (needs a network)")
    args = p.parse_args(argv)
    if args.save and not args.entity:
        p.error("--save needs --entity (the W&B user or team that owns the project)")
    if args.report is not None and not (args.report / "results.md").is_file():
        sys.exit(
            f"zr_ablate.dashboard: error: {args.report} holds no results.md; pass a folder written by "
            f"python -m zr_ablate.report"
        )
    rates = swept_rates(args.report)
    table = (
        (args.report / "perplexity.md").read_text()
        if args.report and (args.report / "perplexity.md").is_file()
        else None
    )
    entity = args.entity or "ENTITY"
    view, doc = (
        workspace(entity, args.project, args.group, rates),
        report(entity, args.project, args.group, rates, table),
    )
    if not args.save:
        print(json.dumps(view._to_model().model_dump(mode="json", by_alias=True, exclude_none=True), indent=1))
        print(
            f"built offline: a workspace view ({len(view.sections[0].panels)} panels) and a Report "
            f"({len(doc.blocks)} blocks) for {args.project}/{args.group}; --save --entity E creates them on W&B",
            file=sys.stderr,
        )
        return
    view.save()
    doc.save()
    print(f"workspace: {view.url}\nreport: {doc.url}")


if __name__ == "__main__":
    main()
