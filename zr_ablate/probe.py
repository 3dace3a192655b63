"""`python -m zr_ablate.probe`: the context-length probe of trained jobs (zr_ablate/analysis/context_probe.py)."""

from zr_ablate.analysis.context_probe import main

if __name__ == "__main__":
    main()
