"""The table of jobs a multirun prints at its end (a Hydra callback, zr_ablate/conf/config.yaml): one row per
job with its size, placement, seed, status, perplexities and the published number set beside it."""

from __future__ import annotations

from pathlib import Path

from hydra.experimental.callback import Callback


class JobTable(Callback):
    def on_multirun_end(self, config, **kwargs) -> None:
        from zr_ablate.analysis.report.tables import compact  # pandas, only now
        from zr_ablate.analysis.runs import NoRunsError, load_sweep

        try:
            print(compact(load_sweep(Path(config.hydra.sweep.dir))[0]))
        except NoRunsError:
            pass  # no job got a folder (the sweep stopped before any started): the guard's line says so
