"""Throughput (floor 6, the top: may import every floor).

- cli.py (python -m zr_ablate.bench): every placement against the fused baseline, on CPU or CUDA;
- measure.py, workload.py: timing a training step, the synthetic workload it runs;
- concurrency.py: several jobs on one device at once;
- budget.py (python -m zr_ablate.bench.budget): a sweep within a wall-clock budget, resumed by the next run;
  its parts: jobs.py (the sweep's jobs and records), paths.py (GPU paths checked), speeds.py, plan.py (pure),
  launch.py and runner.py (the jobs' processes and deadline), mps.py, archive.py, summary.py.
- packed.py: packed members against one job and against several processes.
"""
