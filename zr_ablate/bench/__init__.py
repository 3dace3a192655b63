"""Throughput (floor 6, the top: may import every floor).

- cli.py (python -m zr_ablate.bench): every placement against the fused baseline, on CPU or CUDA;
- measure.py, workload.py: timing a training step, the synthetic workload it runs;
- concurrency.py: several jobs on one device at once;
- plan.py, sprint.py and their helpers: a sweep planned and run within a wall-clock budget.
"""
