"""lkd: Lightning Knowledge Distillation."""

__version__ = "0.1.0"
