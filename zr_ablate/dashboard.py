"""`python -m zr_ablate.dashboard`: W&B dashboards as code (zr_ablate/analysis/dashboard.py)."""

from zr_ablate.analysis.dashboard import main

if __name__ == "__main__":
    main()
