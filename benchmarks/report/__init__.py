"""One results table for every method: ``python -m benchmarks.report`` (see ``cli``).

``methods`` (the rows, their checkpoints and CPU-budget commands), ``suite`` (the test sets, generated with fixed
seeds), ``cells`` (one ``main.py test`` per method x set x scale, resumable), ``tables`` and ``figures`` (what the
report shows), ``writer`` (Markdown, CSV, JSON, W&B).
"""
