from functools import partial

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from lkd.callbacks import ContinualEvaluation
from lkd.cli import LKDCLI
from lkd.data import NonStationaryMNISTDataModule, class_pair_orders
from lkd.figures import accuracy_heatmap
from lkd.metrics import ContinualAccuracyMatrix, average_accuracy, forgetting
from lkd.modules import ClassifierModule
from tests.conftest import CONFIGS
from tests.helpers import tiny_mlp, tiny_trainer
from tests.mnist_fixtures import mnist_tiny_args


def test_accuracy_matrix_and_forgetting_on_a_hand_example():
    metric = ContinualAccuracyMatrix(3)
    # after stage 0: group 0 at 1.0; after stage 1: groups 0, 1 at 0.5, 1.0; after stage 2: 0.25, 0.5, 1.0
    rows = [[1.0, 0.0, 0.0], [0.5, 1.0, 0.0], [0.25, 0.5, 1.0]]
    for i, row in enumerate(rows):
        for j, acc in enumerate(row):
            target = torch.zeros(4, dtype=torch.long)
            preds = torch.tensor([0] * int(4 * acc) + [1] * (4 - int(4 * acc)))
            metric.update(i, j, preds, target)
    matrix = metric.compute()
    torch.testing.assert_close(matrix, torch.tensor(rows))
    torch.testing.assert_close(average_accuracy(matrix), torch.tensor([1.0, 0.75, 1.75 / 3]))
    # group 0: best 1.0 before the end, final 0.25 -> 0.75; group 1: best 1.0, final 0.5 -> 0.5
    torch.testing.assert_close(forgetting(matrix), torch.tensor([0.75, 0.5]))


def test_unmeasured_entries_are_nan():
    metric = ContinualAccuracyMatrix(2)
    metric.update(0, 0, torch.tensor([1]), torch.tensor([1]))
    matrix = metric.compute()
    assert matrix[0, 0] == 1.0 and torch.isnan(matrix[1]).all()


@pytest.mark.parametrize(
    "stages, message",
    [([[0, 1], []], "stage 1 is an empty class group"), ([[0, 1], [1, 2]], "class 1 is in stage 0 and stage 1")],
)
def test_bad_stages_are_named(stages, message):
    with pytest.raises(ValueError, match=message):
        NonStationaryMNISTDataModule(stages=stages)


def test_class_outside_the_data(tiny_mnist):
    dm = NonStationaryMNISTDataModule(str(tiny_mnist), stages=[[0, 11]], train_size=500, val_size=100)
    with pytest.raises(ValueError, match=r"\[11\] are not classes of .*which has 0..9\. HINT"):
        dm.setup("fit")


class RecordLabels(Callback):
    def __init__(self):
        self.labels = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.labels.setdefault(trainer.current_epoch, set()).update(batch[1].tolist())


def continual_run(tmp_path, tiny_mnist, **trainer_kwargs):
    torch.manual_seed(0)
    data = NonStationaryMNISTDataModule(
        str(tiny_mnist), stages=[[3, 4], [5, 6], [7, 8]], epochs_per_stage=2, train_size=500, val_size=100, batch_size=10
    )
    module = ClassifierModule(tiny_mlp, num_classes=data.num_classes, optimizer=partial(torch.optim.Adam, lr=1e-2),
                              lr_schedule="constant")
    evaluation, record = ContinualEvaluation(split="test"), RecordLabels()
    trainer = tiny_trainer(tmp_path, max_epochs=6, callbacks=[evaluation, record], **trainer_kwargs)
    return trainer, module, data, evaluation, record


def test_stages_switch_inside_one_fit_and_fill_the_matrix(tmp_path, tiny_mnist):
    trainer, module, data, evaluation, record = continual_run(tmp_path, tiny_mnist)
    trainer.fit(module, datamodule=data)
    # stage i trains only on its two classes (labels 2i, 2i+1), two epochs each
    assert record.labels == {0: {0, 1}, 1: {0, 1}, 2: {2, 3}, 3: {2, 3}, 4: {4, 5}, 5: {4, 5}}
    matrix = evaluation.matrix.compute()
    assert matrix.shape == (3, 3) and not torch.isnan(matrix).any()
    assert (matrix.diagonal() > 0.9).all()  # each group is learned in its stage
    assert (matrix[0, 1:] == 0).all()  # class-incremental: classes not trained yet are never predicted
    assert matrix[2, 0] < 0.5  # an MLP with one head forgets the first pair


def test_task_incremental_evaluation_masks_to_the_group(tmp_path, tiny_mnist):
    trainer, module, data, _, _ = continual_run(tmp_path, tiny_mnist)
    trainer.fit(module, datamodule=data)
    task = ContinualEvaluation(split="test", incremental="task")
    task.setup(trainer, module, "fit")
    row = task.evaluate(module, data, stage=2)
    assert row[0] > 0.5  # with the task given, old pairs are still separable


def test_wrong_epoch_count_is_named(tmp_path, tiny_mnist):
    trainer, module, data, _, _ = continual_run(tmp_path, tiny_mnist)
    trainer.fit_loop.max_epochs = 5
    with pytest.raises(ValueError, match=r"trainer.max_epochs is 5, but 3 stages x 2 epochs_per_stage need 6"):
        trainer.fit(module, datamodule=data)


def test_heatmap_figure():
    fig = accuracy_heatmap(torch.tensor([[1.0, float("nan")], [0.5, 0.9]]), [[0, 1], [2, 3]])
    fig.canvas.draw()
    width, height = fig.canvas.get_width_height()
    assert width > 100 and height > 100 and len(fig.axes[0].texts) == 3


def test_resume_mid_run_continues_the_stage_and_the_matrix(tmp_path, tiny_mnist):
    from lightning.pytorch.callbacks import ModelCheckpoint

    trainer, module, data, evaluation, _ = continual_run(tmp_path / "full", tiny_mnist)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, filename="{epoch}")
    trainer = tiny_trainer(tmp_path / "full", max_epochs=6, callbacks=[evaluation, ckpt], enable_checkpointing=True)
    trainer.fit(module, datamodule=data)

    resumed_trainer, resumed_module, resumed_data, resumed_eval, record = continual_run(tmp_path / "resumed", tiny_mnist)
    resumed_trainer.fit(resumed_module, datamodule=resumed_data, ckpt_path=tmp_path / "ckpt" / "epoch=2.ckpt")
    assert record.labels == {3: {2, 3}, 4: {4, 5}, 5: {4, 5}}  # resumed inside stage 1, then stage 2
    torch.testing.assert_close(resumed_eval.matrix.compute(), evaluation.matrix.compute(), equal_nan=True)


def test_a_single_stage_run_gives_a_one_by_one_matrix(tmp_path, tiny_mnist):
    data = NonStationaryMNISTDataModule(str(tiny_mnist), stages=[[3, 4, 5]], epochs_per_stage=1, train_size=500,
                                        val_size=100, batch_size=10)
    module = ClassifierModule(tiny_mlp, num_classes=3, optimizer=partial(torch.optim.Adam, lr=1e-2))
    evaluation = ContinualEvaluation()
    tiny_trainer(tmp_path, max_epochs=1, callbacks=[evaluation]).fit(module, datamodule=data)
    matrix = evaluation.matrix.as_matrix()
    assert matrix.shape == (1, 1) and matrix[0, 0] > 0.5


def test_class_pair_orders_start_with_the_original_and_draw_distinct_partitions():
    orders = class_pair_orders(5, seed=0)
    assert orders[0] == [[0, 1], [2, 3], [4, 5], [6, 7]] and len(orders) == 6
    keys = {tuple(map(tuple, order)) for order in orders}
    assert len(keys) == 6  # distinct, none the original again
    for order in orders:  # every order: 4 sorted pairs that partition digits 0-7
        assert [len(g) for g in order] == [2, 2, 2, 2] and all(g == sorted(g) for g in order)
        assert sorted(c for g in order for c in g) == list(range(8))
    assert class_pair_orders(2, seed=0) == orders[:3]  # sequential draws: fewer orders are a prefix
    assert class_pair_orders(5, seed=1) != orders
    wide = class_pair_orders(3, seed=0, digits=range(10))
    assert wide[0] == orders[0] and all(len({c for g in o for c in g}) == 8 for o in wide)
    assert any(c in (8, 9) for o in wide[1:] for g in o for c in g)


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_random=-1), "num_random must be >= 0, got -1"),
    (dict(num_random=1, digits=[0, 1, 1, 2]), r"digits must not repeat a class, got \[0, 1, 1, 2\]"),
    (dict(num_random=1, digits=range(6)), "4 stages of 2 classes need 8 digits, got 6"),
    (dict(num_random=6, digits=range(4), num_stages=2), "only 5 orders differ from the original; asked for 6"),
])
def test_class_pair_orders_name_bad_requests(kwargs, message):
    with pytest.raises(ValueError, match=message):
        class_pair_orders(**kwargs)


def block_digit(images: torch.Tensor) -> torch.Tensor:
    """(N,) the digit that tests.mnist_fixtures.make_digits drew into each (N, 1, 28, 28) image: its bright block."""
    brightness = torch.stack([images[:, 0, 2 + 6 * (c // 4): 6 + 6 * (c // 4), 2 + 6 * (c % 4): 6 + 6 * (c % 4)].mean((1, 2))
                              for c in range(10)], dim=1)  # (N, 10)
    return brightness.argmax(1)


@pytest.mark.parametrize("stages", [[[5, 2], [7, 0], [1, 6], [3, 4]], [[9, 2], [7, 0], [8, 6], [3, 4]]], ids=["0-7", "with 8 and 9"])
def test_an_arbitrary_order_from_the_cli_gives_its_groups_and_a_full_matrix(stages, tmp_path, tiny_mnist, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = LKDCLI(args=[
        "fit", "-c", str(CONFIGS / "mnist" / "continual_mlp.yaml"), *mnist_tiny_args(tiny_mnist),
        f"--data.init_args.stages={stages}", "--data.init_args.epochs_per_stage=2", "--data.init_args.batch_size=10",
        "--trainer.max_epochs=8", "--model.init_args.optimizer.init_args.lr=0.01", "--trainer.enable_progress_bar=false",
    ])
    data = cli.datamodule
    assert data.stages == stages and data.classes == [c for g in stages for c in g]
    assert cli.model.model.net[-1].out_features == 8  # one head over the 8 classes, in stage order
    for group, digits in enumerate(stages):  # group g's test images are the digits of stages[g], labelled 2g, 2g + 1
        images, labels = data.group_tensors("test", group)
        assert set(labels.tolist()) == {2 * group, 2 * group + 1}
        torch.testing.assert_close(block_digit(images), torch.tensor(digits)[labels - 2 * group])
    evaluation = next(cb for cb in cli.trainer.callbacks if isinstance(cb, ContinualEvaluation))
    matrix = evaluation.matrix.as_matrix()
    assert matrix.shape == (4, 4) and not torch.isnan(matrix).any()
    assert matrix[0, 0] > 0.8  # the first group is learned in its stage (later ones: this tiny MLP is erratic)
    assert all((matrix[s, s + 1:] == 0).all() for s in range(3))  # groups not trained yet are never predicted
    cli.model.eval()
    with torch.no_grad():  # the last row is the final model's accuracy on each group, computed here by hand
        final = [(cli.model(images).argmax(-1) == labels).float().mean() for images, labels in
                 (data.group_tensors("test", g) for g in range(4))]
    torch.testing.assert_close(matrix[-1], torch.stack(final))


def test_batch_classes_loss_keeps_the_earlier_pairs(tmp_path, tiny_mnist):
    """The labels trick (softmax over the batch's classes): later pairs never push the first pair's logits down, so the
    same MLP that forgets the first pair with the ordinary cross-entropy keeps it."""
    results = {}
    for loss_classes in ("all", "batch"):
        trainer, module, data, evaluation, _ = continual_run(tmp_path / loss_classes, tiny_mnist)
        module.loss_classes = loss_classes
        trainer.fit(module, datamodule=data)
        results[loss_classes] = evaluation.matrix.compute()
    assert results["all"][2, 0] < 0.5 < results["batch"][2, 0]
    assert (results["batch"].diagonal() > 0.5).all()


def test_bad_loss_classes_is_named():
    with pytest.raises(ValueError, match=r"loss_classes must be 'all' or 'batch' .*got 'present'"):
        ClassifierModule(tiny_mlp, num_classes=4, loss_classes="present")
