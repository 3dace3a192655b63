"""Throughput (floor 6, the top: may import every floor).

- cli.py (python -m zr_ablate.bench): every placement against the fused baseline, on CPU or CUDA;
- measure.py, workload.py: timing a training step, the synthetic workload it runs;
- concurrency.py: several jobs on one device at once;
- packed.py: packed members against one job and against several processes;
- plan.py, lease.py, sprint.py: planning and running a sweep within a wall-clock budget.
"""
