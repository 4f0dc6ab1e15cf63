"""The SR systems (one LightningModule per stage), their networks, losses and metrics.

This file imports nothing: ``lightning_modules.nets`` and ``lightning_modules.metrics`` must import without Lightning.
The CLI (``lightning_modules.core.cli``) imports every system so that configs may name them by class name.
"""
