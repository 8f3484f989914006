"""lkd: Lightning Knowledge Distillation."""

__version__ = "0.1.0"


def load_student(folder):
    """An exported student folder (``lkd export``) back as a network: :func:`lkd.export.load_student`."""
    from lkd.export import load_student as load

    return load(folder)
