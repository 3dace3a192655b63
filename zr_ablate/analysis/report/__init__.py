"""The report: python -m zr_ablate.report (cli.py); tables.py, figures.py, output.py."""
