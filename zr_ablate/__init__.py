"""zr_ablate: where should dropout go in an LSTM language model? (Zaremba, Sutskever & Vinyals 2014)

The package is built in floors; an import only ever points down (tests/test_layout.py walks them):

    bench/        throughput of every placement, packing and concurrency, time-budgeted runs
    analysis/     what the runs mean: runs -> pandas, recipes and published numbers, context probe, report
    experiment/   composing and running sweeps: build (config -> objects), sweep guard, launchers, W&B run
    training/     how one model is trained: step and SGD, LightningModule, MC evaluation, one job
    model/        the paper's object: masks, LSTM core (fused, loop, Triton), CUDA graphs, language model
    schema.py     the config's types, defaults and ranges; conf/ is every Hydra config
    dropout.py, records.py, data.py, console.py   where dropout goes, the job record, PTB, a quiet console

The commands: run.py (train, one job or a sweep), and python -m zr_ablate.report / .probe / .dashboard /
.bench (the modules of those names at this level only hand over to their floor).
"""
