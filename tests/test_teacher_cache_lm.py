"""Language-model teacher cache: the top-k + tail-bucket KL, round trip (top-k exact, fp16 bound), staleness,
missing rows, cached distillation equal to live distillation, what a cache cannot serve, the CLI."""

from __future__ import annotations

from functools import partial

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback

from lkd.cache import StaleTeacherCacheError, TeacherCache, TeacherCacheError
from lkd.cache.store import CacheableData, teacher_fingerprint
from lkd.callbacks import DistillationReport
from lkd.data.text import TextDataModule
from lkd.losses.kd import kd_kl_div, teacher_topk, topk_kd_kl_div
from lkd.models.router import StudentAwareRouter
from lkd.modules.lm import LMDistillModule
from lkd.teacher import Teacher
from lkd.tokenizers import ByteTokenizer
from tests.conftest import CONFIGS, write_hub_dataset
from tests.helpers import tiny_trainer
from tests.lm_fixtures import VOCAB, WIKITEXT_CONFIG, make_lines, tiny_overrides, tiny_student, tiny_teacher

K = 8


def data(root, **kw) -> TextDataModule:
    settings = dict(block_size=16, batch_size=4, eval_batch_size=8, tokenizer="bytes", train_split="validation[:90%]",
                    val_split="validation[90%:]", test_split="test")
    return TextDataModule(str(root), WIKITEXT_CONFIG, **{**settings, **kw})


def module(cache=None, *, teacher_seed=0, top_k=K, **kw) -> LMDistillModule:
    kw = {"loss_weights": {"kl": 1.0}, "temperature": 2.0, **kw}
    teacher = Teacher(tiny_teacher(seed=teacher_seed), cache=None if cache is None else str(cache), cache_top_k=top_k)
    return LMDistillModule(tiny_student(), teacher, tokenizer="bytes", **kw)


def build(path, root=None, dtype="float16", *, dm=None, **kw) -> TeacherCache:
    return module(path, **kw).write_teacher_cache(dm or data(root), path, dtype=dtype)


trainer = partial(tiny_trainer, max_epochs=None, max_steps=1, limit_val_batches=1, num_sanity_val_steps=0)


# ---- the loss ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_topk_kl_with_the_whole_vocabulary_is_kd_kl_div(temperature):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 5, 11, generator=g) * 3, torch.randn(3, 5, 11, generator=g) * 3
    logprobs, indices = teacher_topk(t, 11, temperature)
    torch.testing.assert_close(topk_kd_kl_div(s, logprobs, indices, temperature), kd_kl_div(s, t, temperature))


def test_topk_kl_is_the_kl_between_k_plus_tail_buckets():
    g = torch.Generator().manual_seed(1)
    s, t, T, k = torch.randn(4, 9, generator=g) * 2, torch.randn(4, 9, generator=g) * 2, 3.0, 3
    logprobs, indices = teacher_topk(t, k, T)
    expected = []
    for row in range(4):  # by hand: k tokens + one bucket for everything else, per row
        p, q = F.softmax(t[row] / T, -1), F.softmax(s[row] / T, -1)
        top = indices[row].tolist()
        rest = [i for i in range(9) if i not in top]
        pb = torch.cat([p[top], p[rest].sum(0, keepdim=True)])
        qb = torch.cat([q[top], q[rest].sum(0, keepdim=True)])
        expected.append((pb * (pb.log() - qb.log())).sum())
    torch.testing.assert_close(topk_kd_kl_div(s, logprobs, indices, T), torch.stack(expected).mean() * T**2)
    # the student gets a gradient on tokens outside the teacher's top-k (through the tail), unlike renormalising
    s.requires_grad_(True)
    topk_kd_kl_div(s, logprobs, indices, T).backward()
    outside = torch.ones_like(s, dtype=torch.bool).scatter(-1, indices, False)
    assert s.grad[outside].abs().sum() > 0
    with pytest.raises(ValueError, match=r"top-k targets \(4, 3\) / indices \(4, 2\)"):
        topk_kd_kl_div(s, logprobs, indices[:, :2], T)


# ---- round trip ----------------------------------------------------------------------------------------
def reference_topk(teacher, blocks: torch.Tensor, batch: int, temperature: float):
    """The teacher over the split's blocks in the loader's batches, outside any cache code."""
    out = []
    with torch.no_grad():
        for chunk in blocks.split(batch):
            out.append(F.log_softmax(teacher(input_ids=chunk).logits / temperature, -1).topk(K, -1))
    return torch.cat([o.values for o in out]), torch.cat([o.indices for o in out])  # (N, T, K) each


def test_round_trip_keeps_the_teachers_top_k_within_float16(tmp_path, tiny_wikitext):
    dm = data(tiny_wikitext)
    cache = build(tmp_path / "c.pt", dm=dm)
    assert cache.stages == ["train", "val"]
    assert cache.targets == {"kind": "lm_topk", "k": K, "temperature": 2.0, "vocab": VOCAB}
    teacher = tiny_teacher(seed=0).eval()
    for stage in ("train", "val"):
        stored = cache.content["splits"][stage]
        blocks = dm.split(stage).blocks  # (N, 16)
        values, indices = reference_topk(teacher, blocks, 8, 2.0)
        assert stored["topk_logprobs"].dtype == torch.float16 and stored["topk_indices"].dtype == torch.int16
        assert stored["topk_logprobs"].shape == (len(blocks), 16, K)
        ids = torch.arange(len(blocks))
        logprobs, token_ids = cache.topk(stage, ids)
        assert torch.equal(token_ids, indices)  # top-k exact, in order
        err = (logprobs - values).abs()
        assert (err <= 2.0**-11 * values.abs() + 2.0**-24).all()  # fp16 rounding of each log-probability
        assert 0 < stored["max_abs_error"] <= float(err.max()) + 1e-7
    # lookup by id in any order; bytes per block: k (fp16 + int16) per position + the int64 id
    order = torch.randperm(len(ids), generator=torch.Generator().manual_seed(0))[:5]
    assert torch.equal(cache.topk("val", ids[order])[1], cache.topk("val", ids)[1][order])
    assert cache.bytes_per_example() == 16 * K * (2 + 2) + 8


def test_a_vocabulary_above_65536_stores_int32_ids():
    from lkd.cache.store import decode_token_ids, encode_token_ids

    ids = torch.tensor([0, 32767, 32768, 65535])
    assert encode_token_ids(ids, 65536).dtype == torch.int16
    assert torch.equal(decode_token_ids(encode_token_ids(ids, 65536)), ids)
    big = torch.tensor([0, 65536, 151935])
    assert encode_token_ids(big, 151936).dtype == torch.int32
    assert torch.equal(decode_token_ids(encode_token_ids(big, 151936)), big)


# ---- staleness and missing rows ------------------------------------------------------------------------
class LowercaseBytes(ByteTokenizer):
    """Another tokenizer: lower-cases before encoding (other token ids for the same text)."""

    def __call__(self, texts, **kw):
        return super().__call__(texts.lower() if isinstance(texts, str) else [t.lower() for t in texts], **kw)


@pytest.mark.parametrize(
    "change, message",
    [
        ("teacher", r"teacher\.sha256"),
        ("tokenizer", r"train\.tokenizer: cache 'bytes' vs this run 'LowercaseBytes'"),
        ("split", r"train\.split: cache 'validation\[:90%\]' vs this run 'validation\[:80%\]'"),
        ("block_size", r"train\.dataset: .*block_size=16' vs this run .*block_size=12'"),
        ("data", r"train\.content_sha256"),
        ("k", r"targets\.k: cache 8 vs this run 4"),
        ("temperature", r"targets\.temperature: cache 2\.0 vs this run 1\.0"),
    ],
)
def test_a_stale_cache_is_refused_before_any_step(tmp_path, tiny_wikitext, change, message):
    path = tmp_path / "c.pt"
    build(path, tiny_wikitext)
    dm, kw = data(tiny_wikitext), {}
    if change == "teacher":
        kw = {"teacher_seed": 3}
    elif change == "tokenizer":
        dm = data(tiny_wikitext, tokenizer=LowercaseBytes())
    elif change == "split":
        dm = data(tiny_wikitext, train_split="validation[:80%]")
    elif change == "block_size":
        dm = data(tiny_wikitext, block_size=12)
    elif change == "data":
        lines = make_lines(300, 0)
        lines[2] = "the cat sees the dog ."
        other = write_hub_dataset(tmp_path / "wikitext_v2", WIKITEXT_CONFIG, {
            "validation": __import__("datasets").Dataset.from_dict({"text": lines}),
            "test": __import__("datasets").Dataset.from_dict({"text": make_lines(100, 1)})})
        dm = data(other)
    elif change == "k":
        kw = {"top_k": 4}
    elif change == "temperature":
        kw = {"temperature": 1.0}
    m = module(path, **kw)
    steps = []
    m.training_step = lambda *a: steps.append(1)  # noqa: ARG005
    with pytest.raises(StaleTeacherCacheError, match=message) as info:
        trainer(tmp_path).fit(m, datamodule=dm)
    assert "HINT: rebuild it with `lkd cache-teacher" in str(info.value)
    assert steps == []


def test_a_missing_cache_file_says_how_to_write_it(tmp_path):
    with pytest.raises(TeacherCacheError, match=r"teacher cache not found: .*nothing\.pt.*lkd cache-teacher.*"
                                                r"drop model\.init_args\.teacher\.cache"):
        TeacherCache.load(tmp_path / "nothing.pt")


def test_missing_rows_are_refused(tmp_path, tiny_wikitext):
    cache = build(tmp_path / "c.pt", tiny_wikitext)
    n = len(cache.content["splits"]["train"]["sample_ids"])
    with pytest.raises(TeacherCacheError, match=rf"no train rows for sample ids \[{n}, {n + 5}\] \(2 missing\)"):
        cache.topk("train", torch.tensor([0, n, n + 5]))
    # a cache over fewer blocks than the run (max_blocks) is refused by its row count
    small = tmp_path / "small.pt"
    build(small, dm=data(tiny_wikitext, max_blocks=10))
    with pytest.raises(StaleTeacherCacheError, match=rf"train\.rows: cache 10 vs this run {n}"):
        TeacherCache.load(small).check(teacher_fingerprint(tiny_teacher(seed=0), None),
                                       {"train": _ready(data(tiny_wikitext)).cache_identity("train")},
                                       targets=module().cache_description())


def _ready(dm: TextDataModule) -> TextDataModule:
    dm.setup("fit")
    return dm


def test_text_data_offers_the_cache_contract(tiny_wikitext):
    dm = _ready(data(tiny_wikitext))
    assert isinstance(dm, CacheableData)
    assert dm.cache_stages() == ["train", "val"]
    for stage in ("train", "val"):
        batches = list(dm.cache_batches(stage))
        ids = torch.cat([b["sample_id"] for b in batches])
        assert torch.equal(ids, dm.cache_sample_ids(stage))  # the loader order is the key order
        assert torch.equal(torch.cat([b["input_ids"] for b in batches]), dm.split(stage).blocks)
        identity = dm.cache_identity(stage)
        assert identity.rows == len(dm.split(stage)) and identity.tokenizer == "bytes"
        assert identity.split == {"train": "validation[:90%]", "val": "validation[90%:]"}[stage]
    assert dm.cache_identity("train").content_sha256 != dm.cache_identity("val").content_sha256


# ---- what a logit cache cannot serve --------------------------------------------------------------------
def test_router_and_teacher_feature_losses_are_refused_with_a_cache(tmp_path):
    with pytest.raises(ValueError, match=r"cannot serve routed distillation.*drop model.init_args.router or the cache"):
        module(tmp_path / "c.pt", router=StudentAwareRouter())
    weights = {"kl": 1.0, "feature": 0.5, "attention": 0.0, "contrastive": 0.1}
    with pytest.raises(ValueError, match=r"loss_weights \{'feature': 0.5, 'contrastive': 0.1\} need the teacher's "
                                         r"hidden states.*set them to 0"):
        module(tmp_path / "c.pt", loss_weights=weights)
    with pytest.raises(ValueError, match=r"teacher\.cache_top_k must be in 1..257 \(the vocabulary\), got 300"):
        module(tmp_path / "c.pt", top_k=300)
    with pytest.raises(ValueError, match=r"teacher\.cache_top_k must be >= 1, got 0"):
        module(tmp_path / "c.pt", top_k=0)
    assert module(tmp_path / "c.pt", loss_weights={"kl": 1.0, "ce": 0.5}).cache_description()["k"] == K


# ---- equivalence with live distillation --------------------------------------------------------------
class Record(Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def distil(tmp_path, root, cache=None, **kw):
    pl.seed_everything(0)
    record = Record()
    m = module(cache, **kw)
    calls = []
    m.teacher.register_forward_hook(lambda *a: calls.append(1))
    trainer(tmp_path, max_steps=6, val_check_interval=3, limit_val_batches=2, callbacks=[record]).fit(m, datamodule=data(root))
    return m, record.losses, m.trainer.callback_metrics, calls


def test_distillation_from_a_full_vocabulary_cache_equals_live_distillation(tmp_path, tiny_wikitext):
    weights = {"kl": 1.0, "ce": 0.3}
    live, live_losses, live_metrics, live_calls = distil(tmp_path / "live", tiny_wikitext, loss_weights=weights, top_k=VOCAB)
    path = tmp_path / "full.pt"
    build(path, tiny_wikitext, dtype="float32", top_k=VOCAB)
    cached, cached_losses, cached_metrics, cached_calls = distil(tmp_path / "cached", tiny_wikitext, path,
                                                                 loss_weights=weights, top_k=VOCAB)
    assert live.teacher.store is None and cached.teacher.store is not None
    assert cached_calls == [] and len(live_calls) > 0  # no teacher forward at all
    assert len(cached_losses) == len(live_losses) == 6
    torch.testing.assert_close(torch.tensor(cached_losses), torch.tensor(live_losses), rtol=1e-5, atol=1e-6)
    for (name, a), b in zip(live.student.state_dict().items(), cached.student.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6, msg=name)
    for key in ("val/loss", "val/kl", "val/ppl"):
        torch.testing.assert_close(cached_metrics[key], live_metrics[key], rtol=1e-5, atol=1e-6)


def test_a_top_k_cache_trains_and_test_runs_the_teacher_live(tmp_path, monkeypatch, tiny_wikitext):
    monkeypatch.chdir(tmp_path)  # the test report lands in tmp
    path = tmp_path / "c.pt"
    m, losses, metrics, calls = distil(tmp_path, tiny_wikitext, path)  # the first fit writes the cache (fp16)
    assert TeacherCache.load(path).dtype == "float16" and all(torch.isfinite(torch.tensor(losses)))
    assert metrics["train/kl_step"] > 0
    dm = data(tiny_wikitext)
    dm.setup("fit")
    build_batches = -(-len(dm.split("train")) // 4) + -(-len(dm.split("val")) // 8)
    assert len(calls) == build_batches  # the teacher ran only to write the cache: train and val read it
    assert m.teacher.store.stages == ["train", "val"]
    trainer(tmp_path, limit_test_batches=2, callbacks=[DistillationReport()]).test(m, datamodule=dm)
    assert len(calls) == build_batches + 2 + 1 + 3  # test: live per batch, then the speed report (burn-in + 3)
    assert m.trainer.callback_metrics["test/kl"] > 0
    # no logger, no report_dir: the report lands in runs/lm_report of the working directory
    report = __import__("json").loads((tmp_path / "runs" / "lm_report" / "retention.json").read_text())
    assert report["retention"]["kl"] == pytest.approx(float(m.trainer.callback_metrics["test/kl"]), rel=1e-5)


# ---- the CLI -----------------------------------------------------------------------------------------
def test_cache_teacher_subcommand_for_the_lm_config(tmp_path, monkeypatch, tiny_wikitext):
    from lkd.cli import LKDCLI

    monkeypatch.chdir(tmp_path)
    config = CONFIGS / "lm" / "student_kd_cached.yaml"
    args = [*tiny_overrides(config, tiny_wikitext), "--model.init_args.teacher.checkpoint=null"]
    LKDCLI(args=["cache-teacher", "-c", str(config), *args])
    cache = TeacherCache.load("checkpoints/lm/teacher_moe_tiny.topk32.cache")
    assert cache.targets == {"kind": "lm_topk", "k": 32, "temperature": 4.0, "vocab": VOCAB}
    assert cache.content["splits"]["train"]["topk_indices"].dtype == torch.int16
    fit = LKDCLI(args=["fit", "-c", str(config), *args, "--trainer.fast_dev_run=true"])
    assert fit.trainer.state.finished and fit.model.teacher.store is not None
    assert fit.model.teacher.checkpoint is None and fit.model.teacher.cache_top_k == 32
    with pytest.raises(StaleTeacherCacheError, match=r"train\.dataset"):
        LKDCLI(args=["fit", "-c", str(config), *args, "--data.init_args.block_size=12", "--trainer.fast_dev_run=true"])
