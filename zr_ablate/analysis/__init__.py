"""What the runs mean (floor 5: reads records and configs; may import every floor below, never bench/).

- runs.py: job folders or a W&B group -> pandas frames;
- recipes.py, published.py: the training recipe behind each published number, and the numbers;
- context_probe.py: how much of a trained model's gain comes from context, by context length;
- dashboard.py: W&B workspaces as code;
- report/: tables, figures and results.md of a sweep.
"""
