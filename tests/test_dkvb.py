"""Discrete Key-Value Bottleneck: shapes, gradients, EMA keys, key writing and initialisation, key phases."""

import math
from functools import partial

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lkd.callbacks import EMAKeyUpdate
from lkd.data import MNISTDataModule
from lkd.models import DiscreteKeyValueBottleneck, DKVBOutput, discrete_key_init
from lkd.modules import ClassifierModule
from tests.helpers import tiny_mlp, tiny_trainer

tiny_dkvb = partial(DiscreteKeyValueBottleneck, num_codebooks=4, num_keys=16, key_dim=4)


def plane_dkvb(**kwargs) -> DiscreteKeyValueBottleneck:
    """One codebook of 2 keys in the plane, input used as the query: every number can be done by hand."""
    return DiscreteKeyValueBottleneck(2, 2, num_codebooks=1, num_keys=2, key_dim=2, projection="none", **kwargs)


TWO_KEYS = torch.tensor([[[0.0, 0.0], [10.0, 10.0]]])  # (C=1, K=2, Dk=2)


# ---- the module -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("decoder", ["mean", "concat"])
def test_forward_shapes(decoder):
    torch.manual_seed(0)
    model = tiny_dkvb(10, decoder=decoder)
    out = model.forward_with_codes(torch.randn(5, 1, 28, 28))
    assert isinstance(out, DKVBOutput)
    assert out.logits.shape == (5, 10) and out.indices.shape == (5, 4) and out.keys_in.shape == (5, 4, 4)
    assert out.indices.dtype == torch.long and 0 <= out.indices.min() and out.indices.max() < 16
    assert model.values.shape == (4, 16, 10 if decoder == "mean" else 8)
    assert model.keys.shape == (4, 16, 4)
    assert model(torch.randn(3, 784)).shape == (3, 10)  # flat input works too


def test_mean_decoder_is_mean_of_selected_values():
    torch.manual_seed(0)
    model = tiny_dkvb(10).eval()
    with torch.no_grad():
        model.values.normal_()
    out = model.forward_with_codes(torch.randn(3, 784))
    expected = torch.stack([
        torch.stack([model.values[c, out.indices[b, c]] for c in range(4)]).mean(0) for b in range(3)
    ])
    torch.testing.assert_close(out.logits, expected)


def test_keys_get_no_gradient_and_values_do():
    torch.manual_seed(0)
    for model in (tiny_dkvb(10), tiny_dkvb(10, decoder="concat")):
        model(torch.randn(8, 784)).logsumexp(-1).sum().backward()
        assert list(model.vq.parameters()) == [] and not model.keys.requires_grad
        assert model.vq._codebook.embed.grad is None
        assert model.values.grad is not None and model.values.grad.abs().sum() > 0


def test_keys_move_by_ema_in_train_mode_only_and_not_when_frozen():
    torch.manual_seed(0)
    model = tiny_dkvb(10)
    x = torch.randn(16, 784)
    before = model.keys.clone()
    model.eval()(x)
    assert torch.equal(model.keys, before)  # eval: no EMA
    model.train()(x)
    assert not torch.allclose(model.keys, before)  # train: EMA
    model.freeze_keys()
    frozen = model.keys.clone()
    model(x)
    assert model.keys_frozen and torch.equal(model.keys, frozen)


def test_written_keys_continue_by_ema_from_the_written_values():
    model = plane_dkvb(ema_decay=0.9)
    model.write_keys(TWO_KEYS)
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [9.0, 10.0], [11.0, 10.0]])
    out = model.train().forward_with_codes(x)
    assert out.indices.squeeze(1).tolist() == [0, 0, 1, 1]
    # EMA by hand: cluster size 0.9·1 + 0.1·2 = 1.1; key = (0.9·key + 0.1·sum of its queries) / 1.1
    expected = torch.tensor([[[0.1, 0.1], [11.0, 11.0]]]) / 1.1
    torch.testing.assert_close(model.keys, expected, atol=1e-5, rtol=1e-5)
    # a plain `vq.codebook = keys` would be undone by the next train forward, written keys are not
    model.write_keys(TWO_KEYS)
    model.freeze_keys()
    model(x)
    assert torch.equal(model.keys, TWO_KEYS)


def test_discrete_key_init_by_hand():
    model = plane_dkvb(ema_decay=0.9)
    model.write_keys(TWO_KEYS)
    teacher = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0], [10.0, 11.0], [12.0, 10.0], [7.0, 7.0]])
    keys = discrete_key_init(model, teacher, neighbours=2, temperature=1.0)
    # key 0 at (0,0): nearest (1,0) at d=1 and (0,2) at d=4; key 1 at (10,10): (10,11) at d=1 and (12,10) at d=4
    w1, w4 = math.exp(-1) / (math.exp(-1) + math.exp(-4)), math.exp(-4) / (math.exp(-1) + math.exp(-4))
    expected = torch.tensor([[[w1, 2 * w4], [10 + 2 * w4, 10 + w1]]])
    torch.testing.assert_close(keys, expected)
    torch.testing.assert_close(model.keys, expected)
    # the keys moved toward the teacher embeddings
    assert (torch.cdist(model.keys[0], teacher).min(-1).values < torch.cdist(TWO_KEYS[0], teacher).min(-1).values).all()
    # with EMA, queries equal to the keys keep them where they are: the EMA continues from the written keys
    model.train()(keys[0])
    torch.testing.assert_close(model.keys, expected)
    # frozen, any query leaves them unchanged
    model.freeze_keys()
    model(teacher)
    torch.testing.assert_close(model.keys, expected)


def test_discrete_key_init_accepts_flat_embeddings():
    torch.manual_seed(0)
    a, b = tiny_dkvb(10), tiny_dkvb(10)
    b.write_keys(a.keys)
    emb = a.project(torch.randn(64, 784))  # (N, C, Dk)
    torch.testing.assert_close(discrete_key_init(a, emb), discrete_key_init(b, emb.flatten(1)))


def test_code_usage():
    model = plane_dkvb()
    usage = model.code_usage(torch.tensor([[0], [0], [0], [0]]))
    assert usage["perplexity"].item() == pytest.approx(1.0) and usage["dead_keys"].item() == 0.5
    usage = model.code_usage(torch.tensor([[0], [1], [0], [1]]))
    assert usage["perplexity"].item() == pytest.approx(2.0) and usage["dead_keys"].item() == 0.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(value_dim=7), r"value_dim \(7\) must equal num_classes \(10\) for the mean decoder; use decoder='concat'"),
        (dict(projection="none"), r"in_features=784 and 4 \* 4 = 16"),
        (dict(num_keys=0, ema_decay=1.5), r"num_keys must be > 0, got 0; ema_decay must be in \(0, 1\), got 1.5"),
    ],
)
def test_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_dkvb(10, **kwargs)


def test_bad_shapes():
    model = tiny_dkvb(10)
    with pytest.raises(ValueError, match=r"keys must have shape .* = \(4, 16, 4\), got \(4, 16, 3\)"):
        model.write_keys(torch.zeros(4, 16, 3))
    with pytest.raises(ValueError, match=r"\(N, 4, 4\) or \(N, 16\), got \(5, 784\)"):
        discrete_key_init(model, torch.zeros(5, 784))
    with pytest.raises(ValueError, match=r"neighbours must be in \[1, N=5\], got 8"):
        discrete_key_init(model, torch.zeros(5, 16))
    with pytest.raises(ValueError, match=r"expects 784 input features per example, got 100"):
        model(torch.zeros(2, 100))
    with pytest.raises(ValueError, match=r"EMA decay must be in \(0, 1\), got 1.0"):
        model.set_ema_decay(1.0)


# ---- the callback ---------------------------------------------------------------------------------------
@pytest.fixture()
def data(tiny_mnist):
    return MNISTDataModule(str(tiny_mnist), train_size=500, val_size=100, batch_size=50)


def make_module():
    pl.seed_everything(0)
    return ClassifierModule(tiny_dkvb, optimizer=partial(torch.optim.Adam, lr=1e-2))


class Recorder(Callback):
    """Keys, values and freeze flag after every training batch, with the optimizer step it started at."""

    def __init__(self):
        self.rows = []

    def on_train_start(self, trainer, pl_module):
        self.start_keys = pl_module.model.keys.clone()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        m = pl_module.model
        self.rows.append((self.step, m.keys.clone(), m.values.detach().clone(), m.keys_frozen))


def test_init_phase_then_frozen_keys(tmp_path, data):
    module, cb, rec = make_module(), EMAKeyUpdate(init_steps=5, log_every_n_steps=5), Recorder()
    tiny_trainer(tmp_path, max_epochs=2, callbacks=[cb, rec]).fit(module, datamodule=data)
    assert [r[0] for r in rec.rows] == list(range(20))
    init, after = rec.rows[:5], rec.rows[5:]
    previous = rec.start_keys
    for step, keys, values, frozen in init:
        assert not frozen and not torch.equal(keys, previous), f"keys did not move at init step {step}"
        assert not values.any(), f"values changed during key initialisation (step {step})"
        previous = keys
    for step, keys, values, frozen in after:
        assert frozen and torch.equal(keys, previous), f"keys moved after the init phase (step {step})"
    assert after[-1][2].abs().sum() > 0 and not torch.equal(after[0][2], after[-1][2])  # values learned
    assert cb.state_dict() == {"phase": "after", "init_steps_done": 5}
    metrics = module.trainer.callback_metrics
    assert metrics["dkvb/phase"] == 1.0 and 1.0 <= metrics["dkvb/perplexity"] <= 16 and 0 <= metrics["dkvb/dead_keys"] < 1


def test_ema_after_init_with_new_decay(tmp_path, data):
    module, rec = make_module(), Recorder()
    cb = EMAKeyUpdate(init_steps=3, after_init="ema", decay_after_init=0.99, module_attr="model", log_every_n_steps=1)
    tiny_trainer(tmp_path, max_steps=6, callbacks=[cb, rec]).fit(module, datamodule=data)
    assert module.model.ema_decay == 0.99 and not module.model.keys_frozen
    assert all(not torch.equal(a[1], b[1]) for a, b in zip(rec.rows[3:], rec.rows[4:]))  # keys still move
    assert not rec.rows[2][2].any() and rec.rows[-1][2].any()


def test_state_dict_round_trip():
    cb = EMAKeyUpdate(init_steps=5)
    cb.phase, cb.init_steps_done = "after", 5
    restored = EMAKeyUpdate(init_steps=5)
    assert restored.phase == "init"
    restored.load_state_dict(cb.state_dict())
    assert (restored.phase, restored.init_steps_done) == ("after", 5)
    restored.load_state_dict({})  # an older checkpoint without these keys keeps the current state
    assert restored.phase == "after"


def test_resume_after_init_phase_keeps_keys_frozen_and_matches(tmp_path, tiny_mnist):
    full_module = make_module()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "a", save_top_k=-1, filename="{epoch}")
    full = tiny_trainer(tmp_path, max_epochs=2, enable_checkpointing=True, callbacks=[EMAKeyUpdate(init_steps=5), ckpt])
    full.fit(full_module, datamodule=MNISTDataModule(str(tiny_mnist), train_size=500, val_size=100, batch_size=50))
    saved = torch.load(tmp_path / "a" / "epoch=0.ckpt", weights_only=True)
    assert saved["callbacks"]["EMAKeyUpdate{'module_attr': None}"] == {"phase": "after", "init_steps_done": 5}

    module, cb, rec = make_module(), EMAKeyUpdate(init_steps=5), Recorder()
    torch.manual_seed(1234)  # the resumed process has different global randomness
    resumed = tiny_trainer(tmp_path, max_epochs=2, callbacks=[cb, rec])
    resumed.fit(module, datamodule=MNISTDataModule(str(tiny_mnist), train_size=500, val_size=100, batch_size=50),
                ckpt_path=tmp_path / "a" / "epoch=0.ckpt")
    assert cb.phase == "after" and module.model.keys_frozen
    assert all(frozen and torch.equal(keys, saved["state_dict"]["model.vq._codebook.embed"]) for _, keys, _, frozen in rec.rows)
    for k, v in full_module.state_dict().items():
        torch.testing.assert_close(module.state_dict()[k], v, msg=f"{k} differs after resume")


@pytest.mark.parametrize(
    "cb_kwargs, trainer_kwargs, message",
    [
        (dict(init_steps=100), dict(max_epochs=1), r"init_steps \(100\) is longer than the training, 10 optimizer steps"),
        (dict(init_steps=5), dict(max_steps=3), r"init_steps \(5\) is longer than the training, trainer.max_steps \(3\)"),
        (dict(init_epochs=3), dict(max_epochs=2), r"init_epochs \(3\) is longer than the training, trainer.max_epochs \(2\)"),
    ],
)
def test_init_phase_longer_than_training(tmp_path, data, cb_kwargs, trainer_kwargs, message):
    trainer = tiny_trainer(tmp_path, callbacks=[EMAKeyUpdate(**cb_kwargs)], **trainer_kwargs)
    with pytest.raises(ValueError, match=message):
        trainer.fit(make_module(), datamodule=data)


def test_callback_errors_name_the_problem(tmp_path, data):
    with pytest.raises(ValueError, match=r"decay_after_init=0.9 needs after_init='ema'"):
        EMAKeyUpdate(decay_after_init=0.9)
    with pytest.raises(ValueError, match=r"set init_steps or init_epochs, not both \(got 2 and 1\)"):
        EMAKeyUpdate(init_steps=2, init_epochs=1)
    trainer = tiny_trainer(tmp_path, max_steps=1, callbacks=[EMAKeyUpdate()])
    with pytest.raises(ValueError, match=r"found no DiscreteKeyValueBottleneck in ClassifierModule; DKVBs there: none; its children: \[.*'model'"):
        trainer.fit(ClassifierModule(tiny_mlp), datamodule=data)
    trainer = tiny_trainer(tmp_path, max_steps=1, callbacks=[EMAKeyUpdate(module_attr="student")])
    with pytest.raises(ValueError, match=r"module_attr='student' is not a DiscreteKeyValueBottleneck in ClassifierModule; DKVBs there: \['model'\]"):
        trainer.fit(make_module(), datamodule=data)


def test_fast_lookup_picks_the_same_keys_and_gives_the_same_logits_as_the_quantiser():
    from einops import rearrange

    from lkd.models.dkvb import nearest_keys

    torch.manual_seed(0)
    m = DiscreteKeyValueBottleneck(in_features=784, num_codebooks=16, num_keys=128, key_dim=8, decoder="concat")
    m.train()(torch.rand(512, 784))  # EMA: trained keys, not the initial ones
    before = m.keys.clone()
    m.train()(torch.rand(64, 784))
    assert not torch.equal(before, m.keys) and not m.uses_fast_lookup  # training still runs the library's EMA
    m.eval()
    assert m.uses_fast_lookup
    x = torch.rand(3000, 784)
    q = m.project(x)
    with torch.no_grad():
        _, library, _ = m.vq(rearrange(q, "b c d -> b (c d)"))
        fast = nearest_keys(q, m.keys.float(), max_elements=5000)  # several chunks
        assert torch.equal(fast, library)
        out = m.forward_with_codes(x)
        assert torch.equal(out.indices, library)
        selected = m.values[torch.arange(16)[None], library]
        torch.testing.assert_close(out.logits, m.head(rearrange(selected, "b c v -> b (c v)")), rtol=0, atol=0)
    m.train()
    m.freeze_keys()
    assert m.uses_fast_lookup  # frozen keys, no dead-code re-draw: the fast path in training too
