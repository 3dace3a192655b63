"""`python -m zr_ablate.report`: the report of a sweep folder or W&B group (zr_ablate/analysis/report/)."""

from zr_ablate.analysis.report.cli import main

if __name__ == "__main__":
    main()
