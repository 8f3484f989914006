"""lkd: Lightning Knowledge Distillation."""

import logging as _logging
import warnings as _warnings

__version__ = "0.1.0"

# Lightning 2.6 calls a torch pytree API that torch 2.13 deprecates, on every predict/test: nothing a user can act on.
_warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
# Lightning 2.6 advertises a cloud logger at every Trainer start; lkd logs to TensorBoard.
_logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(lambda record: "litlogger" not in record.getMessage())


def load_student(folder):
    """An exported student folder (``lkd export``) back as a network: :func:`lkd.export.load_student`."""
    from lkd.export import load_student as load

    return load(folder)
