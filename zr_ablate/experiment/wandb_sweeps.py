"""The W&B sweep configs (zr_ablate/conf/wandb/) written from the named grids (zr_ablate/conf/grid/), so the two
never differ.

    python -m zr_ablate.experiment.wandb_sweeps            # rewrite conf/wandb/*.yaml from conf/grid/*.yaml
    python -m zr_ablate.experiment.wandb_sweeps --check    # exit 1 naming the files that are not current

A grid is `sweep: NAME` and Hydra sweeper params (`key: a,b,c`); its W&B config runs the same jobs: one
parameter per key (`value` for one, `values` for several), the sweep name as a fixed parameter, and the
agent calling run.py with Hydra-style key=value arguments, so each W&B run is one Hydra job.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from zr_ablate.schema import CONF_DIR

PROG = "python -m zr_ablate.experiment.wandb_sweeps"
HEADER = """# Written by `python -m zr_ablate.experiment.wandb_sweeps` from zr_ablate/conf/grid/{name}.yaml
# (python run.py -m grid={name}); do not edit. For users who drive sweeps with
# `wandb sweep zr_ablate/conf/wandb/{name}.yaml` then `wandb agent <id>`: the agent calls run.py with Hydra-style
# key=value arguments (${{args_no_hyphens}}), so each run is one Hydra job as above.
"""


def _values(spec) -> list:
    """A sweeper param (`a,b,c` or a single value) -> its values, typed as YAML reads them."""
    if isinstance(spec, str):
        return [yaml.safe_load(v.strip()) for v in spec.split(",")]
    return [spec]


def wandb_sweep(grid: Path) -> str:
    """One grid file -> the text of its W&B sweep config."""
    config = yaml.safe_load(grid.read_text())
    name = config["sweep"]
    parameters = {"sweep": {"value": name}}
    for key, spec in config["hydra"]["sweeper"]["params"].items():
        values = _values(spec)
        parameters[key] = {"value": values[0]} if len(values) == 1 else {"values": values}
    body = {
        "name": name,
        "program": "run.py",
        "method": "grid",
        "metric": {"name": "best_val_ppl", "goal": "minimize"},
        "parameters": parameters,
        "command": ["${env}", "${interpreter}", "${program}", "${args_no_hyphens}"],
    }
    return HEADER.format(name=grid.stem) + yaml.safe_dump(body, sort_keys=False)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if a W&B config is not current")
    args = p.parse_args(argv)
    stale = []
    for grid in sorted((CONF_DIR / "grid").glob("*.yaml")):
        target, text = CONF_DIR / "wandb" / grid.name, wandb_sweep(grid)
        if not target.is_file() or target.read_text() != text:
            stale.append(target)
            if not args.check:
                target.write_text(text)
    if args.check and stale:
        sys.exit(f"{PROG}: not current: {', '.join(map(str, stale))}; run {PROG}")
    print(
        f"{'stale' if stale and args.check else 'written' if stale else 'current'}: "
        f"{len(stale) or len(list((CONF_DIR / 'grid').glob('*.yaml')))} W&B sweep configs"
    )


if __name__ == "__main__":
    main()
