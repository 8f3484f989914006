"""lkd: Lightning Knowledge Distillation."""

import warnings as _warnings

__version__ = "0.1.0"

# Lightning 2.6 calls a torch pytree API that torch 2.13 deprecates, on every predict/test: nothing a user can act on.
_warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")


def load_student(folder):
    """An exported student folder (``lkd export``) back as a network: :func:`lkd.export.load_student`."""
    from lkd.export import load_student as load

    return load(folder)
