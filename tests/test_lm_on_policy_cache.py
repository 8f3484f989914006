"""Sequence-level KD from a teacher cache (lkd.modules.on_policy_cache): OnPolicyDistillModule with lmbda 0 and
off_policy teacher reads the teacher's greedy completions and its top-k along them from `lkd cache-teacher`'s file, and
never runs the teacher while it trains. Tiny Llamas on a tiny arithmetic task."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from lkd.cache import StaleTeacherCacheError, TeacherCache
from lkd.cache.store import CacheableData
from lkd.data.prompts import PromptDataModule, join_prompt_completion
from lkd.losses.kd import teacher_topk
from lkd.models import TinyLlamaLM
from lkd.modules.on_policy import OnPolicyDistillModule
from lkd.teacher import Teacher
from lkd.tokenizers import ByteTokenizer
from tests.conftest import CONFIGS
from tests.helpers import tiny_trainer
from tests.lm_fixtures import arithmetic_prompts

LLAMA = {"vocab_size": 257, "hidden_size": 32, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 48,
         "max_position_embeddings": 64}
K, NEW = 8, 4  # top_k, max_new_tokens

trainer = partial(tiny_trainer, limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0)


def teacher_net(seed: int) -> TinyLlamaLM:
    """A tiny Llama with varied greedy answers, some ending early: weights of std 0.5 (a fresh one's are nearly uniform,
    its greedy answer one token repeated), and the end-of-sequence token's embedding 1.5 times a frequent answer's."""
    net, generator = TinyLlamaLM(**LLAMA, seed=seed), torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "norm" not in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
        embeddings = net.model.model.embed_tokens.weight  # (V, H), tied to the output layer
        embeddings[ByteTokenizer().eos_token_id] = embeddings[162] * 1.5
    return net


def module(cache=None, *, teacher_seed: int = 0, cache_top_k: int = 32, **kw) -> OnPolicyDistillModule:
    teacher = Teacher(model=teacher_net(teacher_seed), cache=None if cache is None else str(cache), cache_top_k=cache_top_k)
    settings = {"max_new_tokens": NEW, "lmbda": 0.0, "off_policy": "teacher", "top_k": K, "beta": 0.5, "temperature": 2.0}
    return OnPolicyDistillModule(TinyLlamaLM(**LLAMA, seed=1), teacher, tokenizer="bytes", **{**settings, **kw})


def build(path, arithmetic_task, dtype: str = "float16", **kw) -> TeacherCache:
    return module(path, **kw).write_teacher_cache(arithmetic_prompts(arithmetic_task), path, dtype=dtype)


def ready(model: OnPolicyDistillModule, dm: PromptDataModule) -> PromptDataModule:
    model.connect_data(dm)
    dm.setup("fit")
    return dm


def refuse_teacher(model: OnPolicyDistillModule) -> None:
    def forward(*args, **kwargs):
        raise AssertionError("the teacher ran during a cached fit")

    model.teacher.model.forward = forward


# ---- what the cache holds -----------------------------------------------------------------------------------
def test_the_cache_holds_the_teachers_greedy_completions_and_its_top_k_along_them(tmp_path, arithmetic_task):
    cache = build(tmp_path / "c.pt", arithmetic_task, dtype="float32")
    assert cache.targets == {"kind": "lm_completions", "k": K, "temperature": 2.0, "vocab": 257, "max_new_tokens": NEW}
    assert cache.stages == ["train", "val"]
    live = module()
    dm = ready(live, arithmetic_prompts(arithmetic_task))
    assert isinstance(dm, CacheableData) and dm.cache_identity("val").rows == 8
    for stage in ("train", "val"):
        batches = list(dm.cache_batches(stage))
        assert torch.equal(torch.cat([b["row_index"] for b in batches]), dm.cache_sample_ids(stage))
        for batch in batches:
            taught = live.teacher_greedy(batch)  # (B, C)
            stored = cache.batch_targets(stage, batch["row_index"])
            C = taught.tokens.shape[1]
            assert stored["completion_ids"].shape == (4, NEW) and torch.equal(stored["completion_length"], taught.lengths)
            assert torch.equal(stored["completion_ids"][:, :C], taught.tokens)
            assert bool((stored["completion_ids"][:, C:] == live.pad_token_id).all())
            ids, attention, _ = join_prompt_completion(batch["prompt_ids"], batch["prompt_mask"], taught.tokens, taught.mask.long())
            with torch.no_grad():
                logits = live.teacher(input_ids=ids, attention_mask=attention, position_ids=(attention.cumsum(-1) - 1).clamp(min=0)).logits
            P = batch["prompt_ids"].shape[1]
            logprobs, indices = teacher_topk(logits[:, P - 1:P - 1 + C], K, 2.0)  # (B, C, k)
            inside = taught.mask[..., None]
            torch.testing.assert_close(stored["topk"][0][:, :C] * inside, logprobs * inside, rtol=1e-5, atol=1e-5)
            assert torch.equal(stored["topk"][1][:, :C] * inside, indices * inside)


# ---- the loss -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("dtype", "tolerance"), [("float32", 1e-5), ("float16", 2e-3)])
def test_a_cached_step_equals_the_live_sequence_level_kd_step(tmp_path, arithmetic_task, dtype, tolerance):
    path = tmp_path / "c.pt"
    build(path, arithmetic_task, dtype=dtype)
    live, cached = module(loss="jsd_topk"), module(path)
    assert cached.loss_name == "jsd_topk"  # the default with a cache
    dm = ready(live, arithmetic_prompts(arithmetic_task))
    ready(cached, arithmetic_prompts(arithmetic_task))
    cached.teacher.attach_cache(dm, cached.cache_description())
    refuse_teacher(cached)
    lengths = []
    for stage, batch in [(split, b) for split in ("train", "val") for b in dm.cache_batches(split)]:
        taught = live.teacher_greedy(batch)
        lengths += taught.lengths.tolist()
        if stage == "val":  # live validation scores the references; the cache holds the teacher's answers
            batch = dict(batch, completion_ids=taught.tokens, completion_mask=taught.mask.long())
        want, got = live.step(batch, stage), cached.step(batch, stage)
        assert float(want.terms["completion_tokens"]) == float(got.terms["completion_tokens"]) > 0
        for name in ("divergence", "nll"):
            torch.testing.assert_close(got.terms[name], want.terms[name], rtol=tolerance, atol=tolerance, msg=f"{stage}/{name}")
        assert float(want.terms["divergence"].detach()) > 0.05  # a teacher the student does not match yet
    assert min(lengths) < NEW == max(lengths)  # answers that end early and answers cut at max_new_tokens


# ---- training from the cache ------------------------------------------------------------------------------------
class Losses(Callback):
    def __init__(self):
        self.values = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.values.append(float(outputs["loss"]))


def test_the_first_fit_writes_the_cache_and_a_cached_fit_never_runs_the_teacher(tmp_path, arithmetic_task):
    from lkd.callbacks import CompletionEvaluation

    path = tmp_path / "c.pt"
    first = module(path)
    trainer(tmp_path, max_steps=1).fit(first, datamodule=arithmetic_prompts(arithmetic_task))
    assert path.is_file() and first.teacher.store is not None and first.teacher.store.stages == ["train", "val"]
    model = module(path)
    refuse_teacher(model)
    before = [p.detach().clone() for p in model.student.parameters()]
    evaluation = CompletionEvaluation(checker="exact_match", compare_teacher=False, teacher_nll=False)
    fit = trainer(tmp_path, num_sanity_val_steps=1, callbacks=[evaluation])
    fit.fit(model, datamodule=arithmetic_prompts(arithmetic_task))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.student.parameters(), strict=True))
    metrics = fit.callback_metrics
    assert float(metrics["train/on_policy_rows"]) == 0 and torch.isfinite(metrics["train/divergence"])
    assert torch.isfinite(metrics["val/loss"]) and "val/exact_match" in metrics and "val/rougeL_teacher" not in metrics
    # CompletionEvaluation's teacher columns run the teacher, which a cached fit still holds
    model = module(path)
    fit = trainer(tmp_path, limit_train_batches=1, callbacks=[CompletionEvaluation()])
    fit.fit(model, datamodule=arithmetic_prompts(arithmetic_task))
    assert float(fit.callback_metrics["val/teacher_nll"]) > 0 and "val/rougeL_teacher" in fit.callback_metrics


def test_a_cached_fit_resumes_like_an_uninterrupted_one(tmp_path, arithmetic_task):
    """Two epochs straight, or resumed from the first epoch's checkpoint (the teacher refusing to run): the same losses
    and student."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    path = tmp_path / "c.pt"
    build(path, arithmetic_task)

    def run(ckpt_path=None, callbacks=()):
        model, losses = module(path), Losses()
        refuse_teacher(model)
        trainer(tmp_path, max_epochs=2, callbacks=[losses, *callbacks], enable_checkpointing=bool(callbacks)).fit(
            model, datamodule=arithmetic_prompts(arithmetic_task), ckpt_path=ckpt_path)
        return model, losses.values

    straight, straight_losses = run(callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1)])
    resumed, resumed_losses = run(ckpt_path=tmp_path / "ckpt" / "epoch=0-step=2.ckpt")
    assert len(straight_losses) == 4 and resumed_losses == pytest.approx(straight_losses[2:], rel=1e-6)
    for a, b in zip(resumed.student.parameters(), straight.student.parameters(), strict=True):
        torch.testing.assert_close(a, b)


# ---- refused --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("options", "message"), [
    ({"lmbda": 0.5}, r"lmbda=0\.5, but on-policy distillation needs the live teacher.*HINT: set model\.init_args\.lmbda: 0"),
    ({"off_policy": "reference"}, r"off_policy='reference' with teacher\.cache .*HINT: set model\.init_args\.off_policy: teacher"),
    ({"loss": "jsd"}, r"loss='jsd' with teacher\.cache .*not its full distribution\. HINT: set model\.init_args\.loss: jsd_topk"),
    ({"loss": "sampled"}, r"loss='sampled' with teacher\.cache"),
    ({"router": "teacher"}, r"cannot serve a router.*HINT: remove model\.init_args\.router"),
    ({"teacher_tokenizer": "object"}, r"serves one tokenizer.*HINT: remove model\.init_args\.teacher_tokenizer"),
    ({"replay_steps": 2}, r"replay_steps=2 with teacher\.cache .*HINT: set model\.init_args\.replay_steps: 1"),
    ({"top_k": 300}, r"top_k must be in 1\.\.257 \(the teacher's vocabulary\) with teacher\.cache, got 300"),
    ({"cache_top_k": 4}, r"teacher\.cache_top_k=4, but the on-policy cache keeps the module's top_k=8.*HINT: set "
                         r"model\.init_args\.top_k: 4"),
])
def test_what_a_cache_cannot_serve_is_refused_naming_the_fix(tmp_path, options, message):
    from lkd.models.routing import TeacherRouting

    if options.get("router") == "teacher":
        options = {"router": TeacherRouting()}
    if options.get("teacher_tokenizer") == "object":
        options = {"teacher_tokenizer": ByteTokenizer()}
    with pytest.raises(ValueError, match=message):
        module(tmp_path / "c.pt", **options)
    module(tmp_path / "c.pt", cache_top_k=K)  # the same k twice is fine


@pytest.mark.parametrize(("change", "message"), [
    ({"max_new_tokens": 3}, r"targets\.max_new_tokens: cache 4 vs this run 3"),
    ({"top_k": 4}, r"targets\.k: cache 8 vs this run 4"),
    ({"teacher_seed": 5}, r"teacher\.sha256"),
    ({"val_size": 6}, r"train\.rows: cache 16 vs this run 18"),
])
def test_a_cache_written_with_other_settings_is_refused_before_any_step(tmp_path, arithmetic_task, change, message):
    path = tmp_path / "c.pt"
    build(path, arithmetic_task)
    dm = arithmetic_prompts(arithmetic_task, **({"val_size": change.pop("val_size")} if "val_size" in change else {}))
    model = module(path, **change)
    steps = []
    model.training_step = lambda *a: steps.append(1)  # noqa: ARG005
    with pytest.raises(StaleTeacherCacheError, match=message) as info:
        trainer(tmp_path).fit(model, datamodule=dm)
    assert "HINT: rebuild it with `lkd cache-teacher" in str(info.value) and steps == []


# ---- the CLI ----------------------------------------------------------------------------------------------------
def test_cache_teacher_then_fit_with_the_config(tmp_path, monkeypatch):
    from lkd.cli import LKDCLI
    from tests.lm_fixtures import tiny_overrides

    monkeypatch.chdir(tmp_path)
    config = CONFIGS / "lm" / "onpolicy_arithmetic_seqkd_cached.yaml"
    args = [*tiny_overrides(config, tmp_path), "--model.init_args.teacher.checkpoint=null"]
    LKDCLI(args=["cache-teacher", "-c", str(config), *args])
    cache = TeacherCache.load("checkpoints/lm/onpolicy_arithmetic_teacher.seqkd.cache")
    assert cache.targets["kind"] == "lm_completions" and cache.stages == ["train", "val"]
    assert len(cache.content["splits"]["train"]["sample_ids"]) == 32  # n_train 40, 8 carved for validation
    fit = LKDCLI(args=["-c", str(config), *args, "--trainer.fast_dev_run=true"], run=False)
    refuse_teacher(fit.model)
    fit.trainer.callbacks = [c for c in fit.trainer.callbacks if type(c).__name__ != "CompletionEvaluation"]
    fit.trainer.fit(fit.model, datamodule=fit.datamodule)
    assert fit.trainer.state.finished and fit.model.teacher.store is not None
    assert torch.isfinite(fit.trainer.callback_metrics["train/divergence_step"])
