"""Teacher-output cache: round trip, staleness, equivalence with live distillation, CLI, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from lkd.cache import StaleTeacherCacheError, TeacherCache, TeacherCacheError
from lkd.data import GLUEDataModule, MNISTDataModule
from lkd.data.transforms import normalize_uint8
from lkd.modules import DistillModule, GLUEDistillModule
from lkd.teacher import Teacher
from tests.conftest import CONFIGS, write_hub_dataset
from tests.helpers import tiny_cnn, tiny_mlp, tiny_trainer
from tests.mnist_fixtures import make_digits


def mnist(root, **kwargs) -> MNISTDataModule:
    settings = dict(train_size=500, val_size=100, batch_size=50, eval_batch_size=100, max_shift=0)
    return MNISTDataModule(str(root), **{**settings, **kwargs})


def save_teacher(path: Path, seed: int) -> str:
    torch.manual_seed(seed)
    torch.save(tiny_mlp(10).state_dict(), path)
    return str(path)


def module(teacher_ckpt: str, cache: str | None = None, *, num_classes: int = 10, dtype: str = "float32") -> DistillModule:
    torch.manual_seed(0)  # the same student init for every module of a test
    teacher = Teacher(tiny_mlp(num_classes), checkpoint=teacher_ckpt, dtype=dtype, cache=cache)
    return DistillModule(tiny_cnn, teacher, num_classes=num_classes, lr_schedule="constant")


@pytest.fixture()
def teacher(tmp_path) -> str:
    return save_teacher(tmp_path / "teacher.pt", seed=1)


def build(teacher_ckpt, data, path, dtype="float32") -> TeacherCache:
    return module(teacher_ckpt, str(path)).write_teacher_cache(data, path, dtype=dtype)


def reference_logits(teacher_ckpt: str, data: MNISTDataModule, split: str) -> torch.Tensor:
    """The teacher over a whole split in one forward, outside any cache code."""
    m = module(teacher_ckpt)
    m.prepare_teacher()
    images = normalize_uint8(data.datasets[split].images.unsqueeze(1))  # (N, 1, 28, 28)
    with torch.no_grad():
        return m.teacher.model(images)


# ---- round trip ------------------------------------------------------------------------------------
def test_round_trip_float32_is_exact_and_keyed_by_hub_row(tmp_path, tiny_mnist, teacher):
    data = mnist(tiny_mnist)
    cache = build(teacher, data, tmp_path / "c.pt", dtype="float32")
    assert cache.stages == ["train", "val"]
    for stage in ("train", "val"):
        stored = cache.content["splits"][stage]
        assert torch.equal(stored["sample_ids"], data.datasets[stage].sample_ids)  # hub rows, loader order
        assert stored["logits"].dtype == torch.float32 and stored["max_abs_error"] == 0.0
        torch.testing.assert_close(stored["logits"], reference_logits(teacher, data, stage), rtol=1e-5, atol=1e-6)
    # lookup by id, in any order, returns exactly the stored rows
    ids = data.datasets["train"].sample_ids
    order = torch.randperm(len(ids), generator=torch.Generator().manual_seed(0))[:37]
    assert torch.equal(cache.logits("train", ids[order]), cache.content["splits"]["train"]["logits"][order])
    assert cache.bytes_per_example() == 10 * 4 + 8


def test_float16_error_is_within_the_documented_bound(tmp_path, tiny_mnist, teacher):
    data = mnist(tiny_mnist)
    cache = build(teacher, data, tmp_path / "c16.pt", dtype="float16")
    stored = cache.content["splits"]["train"]["logits"]
    ref = reference_logits(teacher, data, "train")
    assert stored.dtype == torch.float16 and cache.bytes_per_example() == 10 * 2 + 8
    err = (stored.float() - ref).abs()
    assert (err <= 2.0**-11 * ref.abs() + 2.0**-24 + 1e-6).all()  # round to nearest, 11-bit significand
    assert 0 < cache.content["splits"]["train"]["max_abs_error"] <= err.max() + 1e-6


def test_logits_that_overflow_float16_are_refused(tmp_path, tiny_mnist):
    torch.manual_seed(0)
    net = tiny_mlp(10)
    with torch.no_grad():
        net.net[-1].bias.fill_(1e6)  # every logit ~1e6 > 65504, the largest float16
    torch.save(net.state_dict(), tmp_path / "huge.pt")
    with pytest.raises(TeacherCacheError, match="do not fit float16.*--dtype=bfloat16"):
        build(str(tmp_path / "huge.pt"), mnist(tiny_mnist), tmp_path / "c.pt", dtype="float16")


# ---- staleness -------------------------------------------------------------------------------------
def fit_with_cache(tmp_path, teacher_ckpt, data, cache_path, **module_kwargs):
    m = module(teacher_ckpt, str(cache_path), **module_kwargs)
    trainer = tiny_trainer(tmp_path, max_steps=1, limit_val_batches=1)
    trainer.fit(m, datamodule=data)
    return m, trainer


@pytest.mark.parametrize(
    "change, message",
    [
        ("teacher", r"teacher\.sha256"),
        ("train_size", r"train\.rows: cache 500 vs this run 400"),
        ("seed", r"train\.sample_ids_sha256"),
        ("classes", r"logits: cache has 10 classes vs this run 2"),
    ],
)
def test_a_stale_cache_is_refused_naming_what_differs(tmp_path, tiny_mnist, teacher, change, message):
    path = tmp_path / "c.pt"
    build(teacher, mnist(tiny_mnist), path)
    teacher_ckpt, data, kwargs = teacher, mnist(tiny_mnist), {}
    if change == "teacher":
        teacher_ckpt = save_teacher(tmp_path / "other.pt", seed=2)
    elif change == "train_size":
        data = mnist(tiny_mnist, train_size=400)
    elif change == "seed":
        data = mnist(tiny_mnist, seed=7)
    elif change == "classes":
        data = mnist(tiny_mnist, classes=[3, 5])
    if change == "classes":  # a 2-class teacher is another teacher too; the class count is reported as well
        torch.manual_seed(1)
        torch.save(tiny_mlp(2).state_dict(), tmp_path / "t2.pt")
        teacher_ckpt, kwargs = str(tmp_path / "t2.pt"), {"num_classes": 2}
    with pytest.raises(StaleTeacherCacheError, match=message) as info:
        fit_with_cache(tmp_path, teacher_ckpt, data, path, **kwargs)
    assert "HINT: rebuild it with `lkd cache-teacher" in str(info.value)


def test_another_data_version_is_refused(tmp_path, tiny_mnist, teacher):
    path = tmp_path / "c.pt"
    build(teacher, mnist(tiny_mnist), path)
    other = write_hub_dataset(tmp_path / "mnist_v2", "mnist", {"train": make_digits(600, 5), "test": make_digits(200, 1)})
    with pytest.raises(StaleTeacherCacheError, match=r"train\.content_sha256"):
        fit_with_cache(tmp_path, teacher, mnist(other), path)


def test_a_copied_teacher_checkpoint_still_matches(tmp_path, tiny_mnist, teacher):
    path = tmp_path / "c.pt"
    build(teacher, mnist(tiny_mnist), path)
    copy = tmp_path / "elsewhere" / "teacher.pt"
    copy.parent.mkdir()
    copy.write_bytes(Path(teacher).read_bytes())
    m, trainer = fit_with_cache(tmp_path, str(copy), mnist(tiny_mnist), path)
    assert trainer.state.finished and m.teacher.store is not None


def test_missing_rows_and_bad_files_are_clear_errors(tmp_path, tiny_mnist, teacher):
    cache = build(teacher, mnist(tiny_mnist), tmp_path / "c.pt")
    with pytest.raises(TeacherCacheError, match=r"no train rows for sample ids \[59999\]"):
        cache.logits("train", torch.tensor([59999, int(cache.content["splits"]["train"]["sample_ids"][0])]))
    (tmp_path / "junk.pt").write_bytes(b"not a cache")
    with pytest.raises(TeacherCacheError, match="not a readable teacher cache"):
        TeacherCache.load(tmp_path / "junk.pt")
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(TeacherCacheError, match="not an lkd teacher cache"):
        TeacherCache.load(tmp_path / "other.pt")
    with pytest.raises(TeacherCacheError, match="exists. HINT: pass --overwrite=true"):
        build(teacher, mnist(tiny_mnist), tmp_path / "c.pt")


def test_augmentation_is_refused_with_a_cache(tmp_path, tiny_mnist, teacher):
    with pytest.raises(TeacherCacheError, match=r"max_shift=2, max_rotation=0.0.*HINT: set data.init_args.max_shift=0"):
        fit_with_cache(tmp_path, teacher, mnist(tiny_mnist, max_shift=2), tmp_path / "c.pt")
    assert not (tmp_path / "c.pt").exists()


def test_changing_training_data_is_refused_with_a_cache(tmp_path, tiny_mnist, teacher):
    from lkd.data import NonStationaryMNISTDataModule

    data = NonStationaryMNISTDataModule(str(tiny_mnist), stages=[[0, 1], [2, 3]], train_size=500, val_size=100,
                                        batch_size=50, eval_batch_size=100)
    with pytest.raises(TeacherCacheError, match=r"does not support NonStationaryMNISTDataModule .*HINT: run the teacher "
                                                r"live \(drop model\.init_args\.teacher\.cache\)"):
        build(teacher, data, tmp_path / "c.pt")
    assert not (tmp_path / "c.pt").exists()


# ---- equivalence with live distillation --------------------------------------------------------------
class RecordLosses(Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def distil(tmp_path, data_root, teacher_ckpt, cache=None, epochs=2):
    record = RecordLosses()
    m = module(teacher_ckpt, str(cache) if cache else None)
    trainer = tiny_trainer(tmp_path, max_epochs=epochs, callbacks=[record])
    trainer.fit(m, datamodule=mnist(data_root))
    return m, record.losses, trainer.callback_metrics


def test_distillation_from_cache_equals_live_distillation(tmp_path, tiny_mnist, teacher):
    live, live_losses, live_metrics = distil(tmp_path / "live", tiny_mnist, teacher)
    path = tmp_path / "c32.pt"
    build(teacher, mnist(tiny_mnist), path, dtype="float32")
    cached, cached_losses, cached_metrics = distil(tmp_path / "cached", tiny_mnist, teacher, cache=path)
    assert cached.teacher.store is not None and live.teacher.store is None
    assert len(cached_losses) == len(live_losses) == 20
    torch.testing.assert_close(torch.tensor(cached_losses), torch.tensor(live_losses), rtol=1e-5, atol=1e-6)
    for (name, a), b in zip(live.student.state_dict().items(), cached.student.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6, msg=name)
    torch.testing.assert_close(cached_metrics["val/loss"], live_metrics["val/loss"], rtol=1e-5, atol=1e-6)


def test_float16_cache_distils_like_live_within_its_error(tmp_path, tiny_mnist, teacher):
    _, live_losses, _ = distil(tmp_path / "live", tiny_mnist, teacher, epochs=1)
    path = tmp_path / "c16.pt"
    _, cached_losses, _ = distil(tmp_path / "cached", tiny_mnist, teacher, cache=path, epochs=1)  # fit writes it (fp16)
    assert TeacherCache.load(path).dtype == "float16"
    torch.testing.assert_close(torch.tensor(cached_losses), torch.tensor(live_losses), rtol=2e-3, atol=1e-4)
    assert cached_losses != live_losses  # the rounding is real, and small


def test_the_teacher_does_not_run_when_the_cache_serves(tmp_path, tiny_mnist, teacher):
    path = tmp_path / "c.pt"
    build(teacher, mnist(tiny_mnist), path)
    m, data = module(teacher, str(path)), mnist(tiny_mnist)
    calls = []
    m.teacher.model.register_forward_hook(lambda *args: calls.append(1))
    tiny_trainer(tmp_path, max_epochs=1).fit(m, datamodule=data)
    assert calls == []  # train and val both served from the cache
    assert m.teacher.store.stages == ["train", "val"]
    tiny_trainer(tmp_path).test(m, datamodule=data)
    assert len(calls) == 2  # test runs the teacher live (200 images, batches of 100)


# ---- the `lkd cache-teacher` subcommand --------------------------------------------------------------
def test_cache_teacher_subcommand_then_fit(tmp_path, monkeypatch, tiny_data_args):
    from lkd.cli import LKDCLI

    monkeypatch.chdir(tmp_path)
    config = str(CONFIGS / "mnist" / "student_kd_cached.yaml")
    LKDCLI(args=["fit", "-c", str(CONFIGS / "mnist" / "teacher.yaml"), *tiny_data_args, "--trainer.max_epochs=1",
                 "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
                 "--best_checkpoint.path=checkpoints/mnist/teacher.ckpt"])
    cli = LKDCLI(args=["cache-teacher", "-c", config, *tiny_data_args])
    cache = TeacherCache.load("checkpoints/mnist/teacher_logits.pt")
    assert cache.dtype == "float16" and cache.content["splits"]["train"]["identity"]["rows"] == 500
    assert cache.content["teacher"]["checkpoint"] == "checkpoints/mnist/teacher.ckpt"
    assert not cli.trainer.state.finished  # nothing was trained
    with pytest.raises(TeacherCacheError, match="exists"):
        LKDCLI(args=["cache-teacher", "-c", config, *tiny_data_args])
    LKDCLI(args=["cache-teacher", "-c", config, *tiny_data_args, "--dtype=float32", "--overwrite=true"])
    assert TeacherCache.load("checkpoints/mnist/teacher_logits.pt").dtype == "float32"
    fit = LKDCLI(args=["fit", "-c", config, *tiny_data_args, "--trainer.fast_dev_run=true"])
    assert fit.trainer.state.finished and fit.model.teacher.store is not None
    with pytest.raises(StaleTeacherCacheError, match=r"train\.rows: cache 500 vs this run 450"):
        LKDCLI(args=["fit", "-c", config, *tiny_data_args, "--data.init_args.train_size=450",
                     "--trainer.fast_dev_run=true"])


def test_cache_teacher_needs_a_cache_path_and_a_distillation_module(tmp_path, monkeypatch, tiny_data_args):
    from lkd.cli import LKDCLI

    monkeypatch.chdir(tmp_path)
    with pytest.raises(TeacherCacheError, match="needs a distillation module"):
        LKDCLI(args=["cache-teacher", "-c", str(CONFIGS / "mnist" / "student_scratch.yaml"), *tiny_data_args])
    with pytest.raises(TeacherCacheError, match=r"model\.init_args\.teacher\.cache, which is not set"):
        LKDCLI(args=["cache-teacher", "-c", str(CONFIGS / "mnist" / "student_kd.yaml"), *tiny_data_args])


# ---- GLUE ------------------------------------------------------------------------------------------
def tiny_bert(num_classes: int = 2, layers=None):
    from lkd.models import TransformerClassifier
    from tests.glue_fixtures import MINILM, TINY_BERT

    return TransformerClassifier(num_classes, MINILM, pretrained=False, keep_layers=layers, config_overrides=TINY_BERT)


def glue_module(cache=None, *, dtype: str = "float32", **kwargs) -> GLUEDistillModule:
    torch.manual_seed(0)
    teacher = Teacher(tiny_bert(), cache=cache, dtype=dtype)
    return GLUEDistillModule(lambda n: tiny_bert(n, layers=[0, 2, 5]), teacher, task="sst2", lr_schedule="constant",
                             **kwargs)


def glue_data(root, **kwargs) -> GLUEDataModule:
    return GLUEDataModule("sst2", hub_id=str(root), **{"batch_size": 8, "eval_batch_size": 8, "max_length": 32, **kwargs})


def test_glue_cache_is_keyed_by_idx_of_a_seeded_subset_and_equals_live(tmp_path, tiny_glue):
    path = tmp_path / "glue.pt"
    cache = glue_module(str(path)).write_teacher_cache(glue_data(tiny_glue, train_size=40, seed=3), path, dtype="float32")
    ids = cache.content["splits"]["train"]["sample_ids"]
    assert len(ids) == 40 and not torch.equal(ids, torch.arange(40))  # GLUE idx of the shuffled subset
    assert cache.content["splits"]["train"]["identity"]["tokenizer"].endswith("all-MiniLM-L6-v2")
    assert cache.stages == ["train", "val"]

    losses = {}
    for name, cache_path in (("live", None), ("cached", str(path))):
        record = RecordLosses()
        m = glue_module(cache_path)
        tiny_trainer(tmp_path / name, max_steps=3, limit_val_batches=1, callbacks=[record]).fit(
            m, datamodule=glue_data(tiny_glue, train_size=40, seed=3))
        losses[name] = torch.tensor(record.losses)
    assert m.teacher.store is not None
    torch.testing.assert_close(losses["cached"], losses["live"], rtol=1e-5, atol=1e-6)

    with pytest.raises(StaleTeacherCacheError, match=r"train\.sample_ids_sha256"):  # another subset
        tiny_trainer(tmp_path / "s", max_steps=1).fit(glue_module(str(path)), datamodule=glue_data(tiny_glue, train_size=40, seed=4))
    with pytest.raises(StaleTeacherCacheError, match=r"train\.content_sha256"):  # another tokenisation
        tiny_trainer(tmp_path / "t", max_steps=1).fit(glue_module(str(path)),
                                                      datamodule=glue_data(tiny_glue, train_size=40, seed=3, max_length=5))


def test_glue_cache_refuses_the_hidden_state_loss():
    with pytest.raises(ValueError, match="cos_weight must be 0 with it, got 1.0"):
        glue_module("x.pt", cos_weight=1.0)


# ---- a teacher held in bf16 ---------------------------------------------------------------------------
def test_bf16_teacher_is_cast_once_and_its_logits_stay_close(tmp_path, tiny_mnist, teacher):
    data = mnist(tiny_mnist)
    data.setup("fit")
    fp32, bf16 = module(teacher), module(teacher, dtype="bfloat16")
    for m in (fp32, bf16):
        m.prepare_teacher()
    assert all(p.dtype == torch.bfloat16 for p in bf16.teacher.parameters())
    assert all(p.dtype == torch.float32 for p in bf16.student.parameters())
    images = normalize_uint8(data.datasets["train"].images[:200].unsqueeze(1))  # (200, 1, 28, 28)
    with torch.no_grad():
        ref, low = fp32.teacher(images), bf16.teacher(images)
    assert low.dtype == torch.float32
    scale = ref.abs().max()
    assert 0 < (low - ref).abs().max() <= 2e-2 * scale  # bf16: 8-bit significand, a few roundings deep
    assert (low.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.98
    record = RecordLosses()
    tiny_trainer(tmp_path, max_steps=3, limit_val_batches=1, callbacks=[record]).fit(bf16, datamodule=mnist(tiny_mnist))
    assert bf16.teacher.model.net[0].weight.dtype == torch.bfloat16 and all(torch.isfinite(torch.tensor(record.losses)))


def test_teacher_follows_a_module_converted_to_half_precision(teacher):
    # what Trainer(precision="bf16-true") does to the whole module, teacher.dtype notwithstanding
    m = module(teacher)
    m.prepare_teacher()
    m.to(torch.bfloat16)
    assert m.teacher.weight_dtype == torch.bfloat16
    images = torch.rand(4, 1, 28, 28)  # fp32 inputs
    with torch.no_grad():
        logits = m.teacher(images)
    assert logits.dtype == torch.float32 and logits.shape == (4, 10) and torch.isfinite(logits).all()


def test_a_cache_records_the_teacher_dtype(tmp_path, tiny_mnist, teacher):
    path = tmp_path / "c.pt"
    build(teacher, mnist(tiny_mnist), path)
    with pytest.raises(StaleTeacherCacheError, match=r"teacher\.dtype: cache 'float32' vs this run 'bfloat16'"):
        fit_with_cache(tmp_path, teacher, mnist(tiny_mnist), path, dtype="bfloat16")


def test_bad_teacher_dtype_is_named():
    with pytest.raises(ValueError, match=r"teacher\.dtype must be one of .* got 'int8'"):
        Teacher(tiny_mlp(10), dtype="int8")


def test_glue_bf16_teacher_with_hidden_state_loss_runs(tmp_path, tiny_glue):
    m = glue_module(cos_weight=1.0, dtype="bfloat16", student_init="teacher")
    record = RecordLosses()
    tiny_trainer(tmp_path, max_steps=2, limit_val_batches=1, callbacks=[record]).fit(m, datamodule=glue_data(tiny_glue))
    assert next(m.teacher.parameters()).dtype == torch.bfloat16 and next(m.student.parameters()).dtype == torch.float32
    assert all(torch.isfinite(torch.tensor(record.losses)))
