import pytest
import torch
import torch.nn.functional as F

from lkd.losses import present_class_cross_entropy


def reference(logits, labels, label_smoothing=0.0):
    """The cross-entropy of the logits cut down to the present classes, labels renumbered."""
    present = labels.unique()  # sorted
    renumbered = torch.searchsorted(present, labels)
    return F.cross_entropy(logits[:, present], renumbered, label_smoothing=label_smoothing)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_equals_the_cross_entropy_over_the_present_classes(label_smoothing):
    torch.manual_seed(0)
    logits, labels = torch.randn(6, 10), torch.tensor([3, 7, 7, 3, 9, 3])
    got = present_class_cross_entropy(logits, labels, label_smoothing=label_smoothing)
    torch.testing.assert_close(got, reference(logits, labels, label_smoothing))
    assert got < F.cross_entropy(logits, labels, label_smoothing=label_smoothing)  # fewer rivals in the softmax


def test_with_every_class_present_it_is_the_ordinary_cross_entropy():
    torch.manual_seed(1)
    logits, labels = torch.randn(8, 4), torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])
    torch.testing.assert_close(present_class_cross_entropy(logits, labels, label_smoothing=0.2),
                               F.cross_entropy(logits, labels, label_smoothing=0.2))


def test_absent_classes_get_no_gradient():
    logits = torch.randn(4, 5, requires_grad=True)
    present_class_cross_entropy(logits, torch.tensor([1, 2, 2, 1]), label_smoothing=0.1).backward()
    assert (logits.grad[:, [0, 3, 4]] == 0).all() and (logits.grad[:, [1, 2]] != 0).all()
    assert torch.isfinite(logits.grad).all()
