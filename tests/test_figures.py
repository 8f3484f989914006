"""TensorBoard views: confusion matrices, DKVB key usage, continual heatmap, and the config as hparams."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from lkd.callbacks import ConfusionMatrixFigure, EMAKeyUpdate
from lkd.callbacks.hparams import flatten_config
from lkd.cli import LKDCLI
from lkd.data import GLUEDataModule, MNISTDataModule
from lkd.figures import confusion_matrix_figure, figure_to_array, key_usage_figure
from lkd.models import DiscreteKeyValueBottleneck
from lkd.modules import ClassifierModule, GLUEClassifierModule
from tests.conftest import CONFIGS
from tests.glue_fixtures import MINILM, TINY_BERT


def events(log_dir: Path) -> EventAccumulator:
    files = list(Path(log_dir).rglob("events.out.tfevents.*"))
    assert files, f"no event file under {log_dir}"
    acc = EventAccumulator(str(files[0].parent), size_guidance={"images": 0, "histograms": 0, "scalars": 0})
    acc.Reload()
    return acc


def test_figures_have_the_expected_size():
    counts = torch.tensor([[5, 1], [2, 7]])
    assert figure_to_array(confusion_matrix_figure(counts)).shape == (210, 360, 3)  # figsize (3.6, 2.1) at 100 dpi
    usage = torch.randint(0, 20, (4, 16))
    assert figure_to_array(key_usage_figure(usage)).shape == (360, 1000, 3)


def test_mnist_confusion_matrix_and_key_usage_in_tensorboard(tmp_path, tiny_mnist):
    pl.seed_everything(0)
    dkvb = partial(DiscreteKeyValueBottleneck, in_features=784, num_codebooks=8, num_keys=32, key_dim=4)
    module = ClassifierModule(dkvb, optimizer=partial(torch.optim.Adam, lr=1e-2))
    data = MNISTDataModule(str(tiny_mnist), train_size=500, val_size=100, batch_size=50)
    confusion = ConfusionMatrixFigure()
    keys = EMAKeyUpdate(init_steps=2, log_every_n_steps=2, figure_every_n_logs=1)
    logger = TensorBoardLogger(tmp_path, name="figs", default_hp_metric=False)
    trainer = pl.Trainer(max_epochs=1, logger=logger, callbacks=[confusion, keys], enable_progress_bar=False,
                         enable_checkpointing=False, num_sanity_val_steps=0, enable_model_summary=False)
    trainer.fit(module, data)
    assert confusion.last_counts.shape == (10, 10) and confusion.last_counts.sum() == 100  # every val image once
    acc = events(logger.log_dir)
    images = acc.Tags()["images"]
    assert "val/confusion_matrix" in images and "dkvb/key_usage" in images
    cm = acc.Images("val/confusion_matrix")[-1]
    assert (cm.width, cm.height) == (800, 650)  # 10 classes: figsize (8.0, 6.5)
    assert len(acc.Images("dkvb/key_usage")) == 5  # 10 steps, a log every 2
    assert "dkvb/selections_per_key" in acc.Tags()["histograms"]


def test_glue_confusion_matrix_uses_label_names(tmp_path, tiny_glue):
    pl.seed_everything(0)
    from lkd.models import TransformerClassifier

    module = GLUEClassifierModule(lambda n: TransformerClassifier(n, MINILM, pretrained=False, config_overrides=TINY_BERT))
    data = GLUEDataModule("sst2", hub_id=str(tiny_glue), batch_size=8)
    confusion = ConfusionMatrixFigure()
    logger = TensorBoardLogger(tmp_path, name="glue", default_hp_metric=False)
    pl.Trainer(max_steps=2, logger=logger, callbacks=[confusion], enable_progress_bar=False, enable_checkpointing=False,
               num_sanity_val_steps=0, enable_model_summary=False, val_check_interval=2).fit(module, data)
    assert confusion.last_counts.shape == (2, 2) and confusion.last_counts.sum() == 16
    assert "val/confusion_matrix" in events(logger.log_dir).Tags()["images"]


def test_config_is_written_as_hparams(tmp_path, monkeypatch, tiny_data_args):
    monkeypatch.chdir(tmp_path)
    LKDCLI(args=["fit", "-c", str(CONFIGS / "mnist" / "student_kd.yaml"), *tiny_data_args, "--trainer.max_epochs=1",
                 "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1", "--model.init_args.teacher.checkpoint=null",
                 "--model.init_args.temperature=3.5"])
    acc = events(tmp_path / "runs" / "mnist_student_kd")
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["model.init_args.temperature"].number_value == pytest.approx(3.5)
    assert start.hparams["model.class_path"].string_value == "DistillModule"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in experiment.metric_infos} == {"val/acc", "val/loss"}


def test_flatten_config():
    flat = flatten_config({"model": {"class_path": "lkd.modules.DistillModule", "init_args": {"alpha": 0.9, "layers": [0, 2]}},
                           "trainer": {"callbacks": [{"class_path": "x"}], "max_epochs": 3}, "config": ["a.yaml"]})
    assert flat == {"model.class_path": "DistillModule", "model.init_args.alpha": 0.9, "model.init_args.layers": "[0, 2]",
                    "trainer.max_epochs": 3}


def test_router_expert_usage_over_training(tmp_path, monkeypatch, tiny_wikitext):
    from lkd.callbacks import RouterExpertUsage
    from tests.lm_fixtures import tiny_overrides

    monkeypatch.chdir(tmp_path)
    config = CONFIGS / "lm" / "student_routed.yaml"
    usage = RouterExpertUsage(log_every_n_steps=1)
    cli = LKDCLI(args=["-c", str(config), *tiny_overrides(config, tiny_wikitext), "--model.init_args.teacher.checkpoint=null",
                       "--trainer.max_steps=3", "--trainer.limit_val_batches=0", "--trainer.num_sanity_val_steps=0",
                       "--best_checkpoint.path=null"], run=False)  # no validation: nothing to publish
    cli.trainer.callbacks.append(usage)
    cli.trainer.fit(cli.model, cli.datamodule)
    assert usage.steps == [1, 2, 3] and len(usage.history[0]) == 8  # 8 teacher experts
    assert all(abs(sum(row) - 1) < 1e-5 for row in usage.history)
    acc = events(cli.trainer.logger.log_dir)
    image = acc.Images("router/expert_usage")[-1]
    assert (image.width, image.height) == (600, 240)  # 8 experts x 3 intervals
    assert "router/experts_used" in acc.Tags()["scalars"]
    # the config's RoutingSchedule draws the planned top-k / temperature schedule at the start and the end
    schedule = acc.Images("router/schedule")
    assert [e.step for e in schedule] == [0, 3]
    assert (schedule[-1].width, schedule[-1].height) == (600, 300)


def test_routing_schedule_figure_shows_the_planned_curves():
    from lkd.callbacks import RoutingSchedule
    from lkd.figures import figure_to_array, routing_schedule_figure

    schedule = RoutingSchedule(start_top_k=1, end_top_k=4, mode="linear", total_steps=100)
    steps = list(range(101))
    ks, taus = zip(*(schedule.values(s) for s in steps))
    fig = routing_schedule_figure(steps, list(ks), list(taus), current_step=40)
    ax_k, ax_t = fig.axes
    k_line, t_line = ax_k.get_lines()[0], ax_t.get_lines()[0]
    assert list(k_line.get_ydata()) == list(ks) and sorted(set(ks)) == [1, 2, 3, 4]
    assert t_line.get_ydata()[0] == 2.0 and abs(t_line.get_ydata()[-1] - 0.5) < 1e-9
    assert list(ax_k.get_lines()[1].get_xdata()) == [40, 40]  # the current-step marker
    assert figure_to_array(fig).shape == (300, 600, 3)
