"""Bad input stops early with an error that names the value and the fix (issue 18): checkpoints given to
``--ckpt_path`` or as a teacher, resumed runs whose settings the checkpoint would override."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest
import torch

from lkd.checkpoint import CheckpointReadError, load_checkpoint
from lkd.cli import LKDCLI, ResumeMismatchError
from tests.conftest import CONFIGS

RUN = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
       "--trainer.num_sanity_val_steps=0"]


@pytest.fixture(scope="module")
def mnist_checkpoint(tmp_path_factory, tiny_mnist) -> Path:
    """A real `lkd fit` checkpoint of configs/mnist/teacher.yaml (ClassifierModule, label_smoothing 0)."""
    import os

    from tests.mnist_fixtures import mnist_tiny_args

    folder = tmp_path_factory.mktemp("ckpt_run")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        cli = LKDCLI(args=["fit", "-c", str(CONFIGS / "mnist" / "teacher.yaml"), *mnist_tiny_args(tiny_mnist), *RUN])
    finally:
        os.chdir(cwd)
    latest = next(cb for cb in cli.trainer.checkpoint_callbacks if cb.filename == "latest")
    return folder / latest.best_model_path


def test_truncated_or_foreign_files_are_named_and_unsafe_loading_never_advised(tmp_path, mnist_checkpoint):
    truncated = tmp_path / "cut.ckpt"
    truncated.write_bytes(mnist_checkpoint.read_bytes()[:1000])
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint")
    pickled = tmp_path / "model.ckpt"
    torch.save({"state_dict": {}, "extra": Path("x")}, pickled)  # a pickled object beyond tensors
    for path, why in ((truncated, "truncated or corrupt"), (text, "not a torch checkpoint|truncated or corrupt"),
                      (pickled, "pickled Python objects")):
        with pytest.raises(CheckpointReadError) as info:
            load_checkpoint(path, what="teacher checkpoint")
        message = str(info.value)
        assert str(path) in message and any(w in message for w in why.split("|")), message
        assert "weights_only=False" not in message and "HINT" in message.splitlines()[-1]


def test_ckpt_path_problems_are_reported_before_anything_is_built(tmp_path, monkeypatch, tiny_data_args, mnist_checkpoint):
    monkeypatch.chdir(tmp_path)
    base = ["fit", "-c", str(CONFIGS / "mnist" / "teacher.yaml"), *tiny_data_args, *RUN]
    import lightning.pytorch as pl

    from lkd.data import MNISTDataModule
    from lkd.models import ConvNet

    def refuse(init):
        @functools.wraps(init)  # the same signature, which the CLI's parser reads
        def built(*args, **kwargs):
            raise AssertionError("built before the --ckpt_path check")

        return built

    with monkeypatch.context() as m:  # before data, models or the trainer are built
        for cls in (MNISTDataModule, ConvNet, pl.Trainer):
            m.setattr(cls, "__init__", refuse(cls.__init__))
        with pytest.raises(FileNotFoundError, match=r"--ckpt_path checkpoint not found: .*missing\.ckpt.*HINT"):
            LKDCLI(args=[*base, "--ckpt_path=missing.ckpt"])
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(b"\0" * 100)
    with pytest.raises(CheckpointReadError, match=r"broken\.ckpt cannot be read"):
        LKDCLI(args=[*base, f"--ckpt_path={broken}"])
    # a checkpoint of another module class (ClassifierModule) given to a distillation config
    with pytest.raises(ResumeMismatchError, match=r"written by lkd\.modules\.ClassifierModule, but the config builds "
                                                  r"lkd\.modules\.DistillModule.*HINT"):
        LKDCLI(args=["test", "-c", str(CONFIGS / "mnist" / "student_kd.yaml"), *tiny_data_args, f"--ckpt_path={mnist_checkpoint}"])


def test_resume_that_would_drop_command_line_changes_stops_and_lists_them(tmp_path, monkeypatch, tiny_data_args, mnist_checkpoint):
    monkeypatch.chdir(tmp_path)
    base = ["fit", "-c", str(CONFIGS / "mnist" / "teacher.yaml"), *tiny_data_args, *RUN, "--trainer.max_epochs=2"]
    with pytest.raises(ResumeMismatchError, match=r"(?s)label_smoothing: the checkpoint has 0\.0, this command 0\.2.*\nHINT"):
        LKDCLI(args=[*base, "--model.init_args.label_smoothing=0.2", f"--ckpt_path={mnist_checkpoint}"])
    # the same settings, but more epochs than the finished one-cycle schedule has: said before the first step
    from lkd.modules.base import ScheduleLengthError

    with pytest.raises(ScheduleLengthError, match=r"(?s)one-cycle .* plans 2 optimizer steps, but this run takes 4.*HINT"):
        LKDCLI(args=[*base, f"--ckpt_path={mnist_checkpoint}"])
    same = [a for a in base if a != "--trainer.max_epochs=2"]
    cli = LKDCLI(args=[*same, f"--ckpt_path={mnist_checkpoint}"])  # exactly as it was: resumes (nothing left to do)
    assert cli.trainer.state.finished and cli.trainer.current_epoch == 1


def test_an_edited_or_broken_mirror_is_read_again_not_served_from_the_cache(tmp_path):
    """A local data set edited in place (same folder and config) is re-read; a broken file fails every time."""
    import datasets

    from lkd.hub import DataFileError, load_hub_dataset
    from tests.conftest import write_hub_dataset

    root = write_hub_dataset(tmp_path / "mirror", "default", {"train": datasets.Dataset.from_dict({"x": list(range(50))})})
    assert len(load_hub_dataset(str(root), "default", split="train")) == 50
    parquet = next(root.rglob("*.parquet"))
    datasets.Dataset.from_dict({"x": list(range(7))}).to_parquet(str(parquet))  # same name, new content
    assert len(load_hub_dataset(str(root), "default", split="train")) == 7
    parquet.write_bytes(b"garbage, not parquet")
    for _ in range(2):  # not hidden by a cache of the previous content, either time
        with pytest.raises(DataFileError, match=r"reading the data of .* failed: .*HINT"):
            load_hub_dataset(str(root), "default", split="train")


def test_data_options_that_name_what_is_wrong(tmp_path, tiny_glue, tiny_wikitext, tiny_mnist):
    from lkd.data.glue import GLUEDataModule
    from lkd.data.mnist import MNISTDataModule
    from lkd.data.text import TextDataModule
    from lkd.hub import DatasetNotFoundError, PretrainedNotFoundError, load_hub_dataset
    from lkd.tokenizers import load_tokenizer

    parquet = next(tiny_wikitext.rglob("*.parquet"))
    with pytest.raises(DatasetNotFoundError, match=r"is a file, but a data set is a folder.*HINT: set hub_id to the folder"):
        load_hub_dataset(str(parquet), "wikitext-2-raw-v1")
    with pytest.raises(ValueError, match=r"is the folder of one task \(sst2\).*HINT: set data.init_args.hub_id to .*task to 'sst2'"):
        GLUEDataModule(task="sst2", hub_id=str(tiny_glue / "sst2"))
    dm = TextDataModule(str(tiny_wikitext), "wikitext-2-raw-v1", train_split="train", tokenizer="bytes")
    with pytest.raises(ValueError, match=r"data.init_args.train_split='train': .* has no split 'train'; its splits: "
                                         r"validation, test\. HINT"):
        dm.setup("fit")
    with pytest.raises(PretrainedNotFoundError, match=r"tokenizer '.*' could not be loaded.*Available offline: 'bytes'"):
        load_tokenizer(str(tmp_path))  # a folder without tokenizer files
    quick = MNISTDataModule(hub_id=str(tiny_mnist), train_size=100, val_size=500)  # a quick run on few training images
    quick.setup("fit")
    assert len(quick.train_dataloader().dataset) == 100 and len(quick.val_dataloader().dataset) == 500


def test_a_refused_value_ends_the_error_not_a_namespace_dump(tmp_path, monkeypatch, tiny_data_args):
    from lkd.cli import ConfigError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        LKDCLI(args=["fit", "-c", str(CONFIGS / "mnist" / "teacher.yaml"), *tiny_data_args, "--model.init_args.label_smoothing=2"])
    message = str(info.value)
    assert message.splitlines()[-1] == "lkd.modules.ClassifierModule: label_smoothing must be in [0, 1), got 2.0"
    assert "Namespace(" not in message and "Union subtypes" not in message


@pytest.mark.parametrize("option, last_line", [
    ("--model.init_args.temperature=abc", "--model.init_args.temperature: Expected a <class 'float'>. Got value: abc."),
    ("--trainer.max_epochs=abc", "--trainer.max_epochs: Expected a <class 'int'>. Got value: abc."),
    ("--model.init_args.tempreature=2", "--model.init_args: Option 'tempreature' is not accepted."),
])
def test_a_mistyped_option_ends_the_error_with_the_option_and_the_problem(option, last_line, capsys):
    with pytest.raises(SystemExit) as info:
        LKDCLI(args=["fit", "-c", str(CONFIGS / "mnist" / "student_kd.yaml"), option])
    assert info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(last_line) and last.endswith("HINT: `lkd fit --help` lists every option with its type"), last


CLASS_PATHS = [  # (config, override, the last line of stderr): a class that cannot be built from its class_path
    ("mnist/teacher.yaml", "--model.class_path=torch.nn.Linear",
     r"^--model\.class_path=torch\.nn\.Linear: not a LightningModule\. lkd's: .*lkd\.modules\.ClassifierModule.*HINT"),
    ("mnist/student_kd.yaml", "--model.class_path=lkd.modules.DistilModule",
     r"^--model\.class_path=lkd\.modules\.DistilModule: lkd\.modules has no DistilModule\. Did you mean lkd\.modules\.DistillModule"),
    ("mnist/student_kd.yaml", "--model.init_args.student.class_path=lkd.models.ConvNett",
     r"^--model\.init_args\.student\.class_path=lkd\.models\.ConvNett: .*Did you mean lkd\.models\.ConvNet\? HINT"),
    ("mnist/student_kd.yaml", "--model.class_path=lkd.modulez.DistillModule",
     r"^--model\.class_path=lkd\.modulez\.DistillModule: lkd has no modulez\. Did you mean lkd\.modules or lkd\.models\? HINT"),
]


@pytest.mark.parametrize("config, override, last_line", CLASS_PATHS, ids=[o for _, o, _ in CLASS_PATHS])
def test_a_class_path_that_names_no_usable_class_says_what_would(config, override, last_line, capsys):
    with pytest.raises(SystemExit):
        LKDCLI(args=["fit", "-c", str(CONFIGS / config), override])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.search(last_line, last) and len(last) < 400, last


def test_a_class_path_typo_in_a_config_file_names_the_key_as_written_there(tmp_path, capsys):
    typo = tmp_path / "typo.yaml"
    typo.write_text((CONFIGS / "mnist" / "teacher.yaml").read_text().replace("lkd.modules.ClassifierModule", "lkd.modules.ClasifierModule"))
    with pytest.raises(SystemExit):
        LKDCLI(args=["fit", "-c", str(typo)])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("model.class_path=lkd.modules.ClasifierModule: lkd.modules has no ClasifierModule. Did you mean "
                           "lkd.modules.ClassifierModule"), last


KA_BAD = '{"class_path": "lkd.models.routing.KnowledgeAugmentation", "init_args": {"sampling_prob": 2.0}}'
DENSE_TEACHER = '{"class_path": "lkd.models.causal_lm.TinyLlamaLM", "init_args": {"vocab_size": 49152, "hidden_size": 64, "num_layers": 4}}'
EMA_BAD = '[{"class_path": "lkd.callbacks.EMAKeyUpdate", "init_args": {"init_epochs": -1}}]'
SCHEDULE_BAD = ('[{"class_path": "lkd.callbacks.RoutingSchedule", "init_args": {"start_top_k": 1, "end_top_k": 4, '
                '"start_temperature": 0, "end_temperature": 0.5}}]')
BAD_INPUTS = [  # (config, overrides, what the last line of the error must say), each refused when the classes are built
    ("mnist/student_kd.yaml", ["--model.init_args.temperature=0"], r"temperature must be > 0, got 0\.0$"),
    ("mnist/student_kd.yaml", ["--model.init_args.alpha=1.5"], r"alpha must be in \[0, 1\], got 1\.5$"),
    ("glue/student_kd.yaml", ["--data.init_args.task=sst3"], r"unknown task 'sst3'.*available configs: cola, mrpc, rte, sst2\. HINT"),
    ("lm/student_kd.yaml", ["--model.init_args.loss_weights={kl: -1}"], r"negative weights \{'kl': -1\.0\}\. HINT"),
    ("lm/student_kd.yaml", ["--model.init_args.teacher_tokenizer=bytes"], r"kl=1\.0 needs one vocabulary.*HINT: use the cross-tokenizer losses"),
    ("lm/student_multiloss.yaml", ["--model.init_args.teacher_tokenizer=bytes", "--model.init_args.loss_weights={alm: 1.0, attention: 0.1}"],
     r"attention compares attention maps position by position.*HINT: set it to 0 \(feature, layer and contrastive work"),
    ("lm/student_sar.yaml", [f"--model.init_args.router={KA_BAD}"], r"KnowledgeAugmentation: sampling_prob must be in \[0, 1\], got 2\.0$"),
    ("lm/student_sar.yaml", ["--model.init_args.router_every_n_steps=0"], r"router_every_n_steps must be >= 1, got 0$"),
    ("lm/student_sar.yaml", ["--model.init_args.router_balance_weight=-1"], r"router_balance_weight must be >= 0, got -1\.0$"),
    ("lm/student_routed.yaml", [f"--model.init_args.teacher.model={DENSE_TEACHER}"], r"TinyLlamaLM has no MoE gates.*HINT: drop the router"),
    ("mnist/continual_dkvb.yaml", [f"--trainer.callbacks={EMA_BAD}"], r"^lkd\.callbacks\.EMAKeyUpdate: init_steps and init_epochs must be >= 0, got 0 and -1$"),
    ("lm/student_routed.yaml", [f"--trainer.callbacks={SCHEDULE_BAD}"], r"^lkd\.callbacks\.RoutingSchedule: .*temperature.*0"),
]


@pytest.mark.parametrize("config, overrides, last_line", BAD_INPUTS, ids=[f"{c}:{o[-1][:40]}" for c, o, _ in BAD_INPUTS])
def test_bad_input_table(config, overrides, last_line, tmp_path, monkeypatch):
    """A refused value stops before any data or training, its reason on the error's last line."""
    from lkd.cli import ConfigError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        LKDCLI(args=["-c", str(CONFIGS / config), *overrides], run=False)
    assert re.search(last_line, str(info.value).strip().splitlines()[-1]), str(info.value)
    assert not any(tmp_path.iterdir())  # nothing written


COMMANDS = [  # (subcommand and options after the config, the error's type name, the regex its last line must match)
    ("mnist/teacher.yaml", ["--trainer.max_epochs=0"], "DistributedSetupError",
     r"^trainer\.max_epochs=0 trains nothing .*HINT: 1 or more"),
    ("mnist/teacher.yaml", ["--trainer.max_steps=0"], "DistributedSetupError", r"^trainer\.max_steps=0 trains nothing"),
    ("mnist/teacher.yaml", ["--data.init_args.classes=[0,11]"], "ValueError",
     r"^data\.init_args\.classes=\[0, 11\]: \[11\] are not classes of .*HINT: list classes from 0 to 9"),
    ("mnist/teacher.yaml", ["--data.init_args.hub_id=ylecun/mnistt"], "DatasetNotFoundError",
     r"Did you mean 'ylecun/mnist'\? HINT: put a hub-layout copy"),
]
if not torch.cuda.is_available():
    COMMANDS.append(("mnist/teacher.yaml", ["--trainer.accelerator=gpu"], "DistributedSetupError",
                     r"^trainer\.accelerator='gpu' asks for CUDA GPUs, but torch sees none here .*HINT: trainer\.accelerator: cpu"))


@pytest.mark.parametrize("config, overrides, error, last_line", COMMANDS, ids=[f"{c}:{o[-1]}" for c, o, _, _ in COMMANDS])
def test_bad_command_table(config, overrides, error, last_line, tmp_path, monkeypatch):
    """`lkd fit` refused before training, the reason on the error's last line, no checkpoint written."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(Exception) as info:
        LKDCLI(args=["fit", "-c", str(CONFIGS / config), *overrides])
    assert type(info.value).__name__ == error, repr(info.value)
    assert re.search(last_line, str(info.value).strip().splitlines()[-1]), str(info.value)
    assert not list(tmp_path.rglob("*.ckpt"))
