"""Exported students (issue 17): Hugging Face folders that transformers loads, lkd folders that load_student
builds back, ONNX run in onnxruntime, int8, the model card, and the errors of `lkd export`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lkd.cli import LKDCLI
from lkd.export import ExportError, export_student, load_student
from lkd.modules import LMDistillModule
from lkd.teacher import Teacher
from tests.conftest import CONFIGS
from tests.lm_fixtures import VOCAB, tiny_student, tiny_teacher


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path, monkeypatch):
    """Every test runs in its own folder: the export's test pass logs to runs/ there, never into the checkout."""
    monkeypatch.chdir(tmp_path)


def lm_module() -> LMDistillModule:
    torch.manual_seed(0)
    return LMDistillModule(tiny_student(), Teacher(tiny_teacher()), tokenizer="bytes", loss_weights={"kl": 1.0})


@pytest.fixture(scope="module")
def lm_export(tmp_path_factory):
    """The tiny LM student exported in every format, int8 included (10-20 s: its users are marked slow)."""
    module = lm_module()
    folder = tmp_path_factory.mktemp("export") / "lm"
    return module, export_student(module, folder, formats="all", quantize="int8", card={"teacher": "tiny MoE"})


@pytest.mark.slow  # the lm_export fixture: ONNX export and int8 quantization of the LM
def test_lm_student_folder_loads_in_transformers_with_equal_logits_and_generates(lm_export):
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    module, result = lm_export
    folder = result.folder
    assert {p.name for p in folder.iterdir()} >= {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
                                                   "model.onnx", "model.int8.onnx", "README.md"}
    assert not list(folder.glob("*.bin")) and not list(folder.glob("*.pt"))  # no pickles
    loaded = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    ids = torch.randint(0, VOCAB, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, module.student(input_ids=ids).logits, rtol=0, atol=1e-5)
    tok = AutoTokenizer.from_pretrained(str(folder))
    assert tok("café 🙂")["input_ids"] == list("café 🙂".encode())  # the byte tokenizer, as an HF tokenizer
    out = pipeline("text-generation", model=str(folder), device="cpu")("The cat", max_new_tokens=5, do_sample=False)
    assert out[0]["generated_text"].startswith("The cat") and len(out[0]["generated_text"].encode()) == len("The cat") + 5


@pytest.mark.slow  # the lm_export fixture
def test_lm_onnx_and_int8_run_in_onnxruntime_with_dynamic_shapes(lm_export):
    import onnxruntime as ort

    module, result = lm_export
    assert result.max_abs_diff["onnx"] < 1e-4
    ids = torch.randint(0, VOCAB, (3, 21))  # another batch and length than the export's example
    with torch.no_grad():
        ref = module.student(input_ids=ids).logits.numpy()
    for name, tol in (("model.onnx", 1e-4), ("model.int8.onnx", 0.5)):
        session = ort.InferenceSession(str(result.folder / name), providers=["CPUExecutionProvider"])
        out = session.run(None, {"input_ids": ids.numpy()})[0]
        assert out.shape == ref.shape and abs(out - ref).max() < tol, name
    assert 0 < result.max_abs_diff["onnx_int8"] < 0.5  # quantized: close, not equal
    card = (result.folder / "README.md").read_text()
    assert "LlamaForCausalLM" in card and "tiny MoE" in card and "model.int8.onnx" in card and "from_pretrained" in card


def test_export_refuses_and_writes_nothing(tmp_path):
    module = lm_module()  # refused before anything is exported: no need for lm_export
    folder = tmp_path / "taken"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    for overwrite in (False, True):  # not an lkd export: refused even with overwrite (issue 27)
        with pytest.raises(ExportError, match=r"taken is not empty and is not an lkd export .*nothing was written\. HINT: choose"):
            export_student(module, folder, overwrite=overwrite)
    assert [p.name for p in folder.iterdir()] == ["keep.txt"]
    with pytest.raises(ExportError, match=r"--quantize int8 quantizes the ONNX file, but --format hf writes none"):
        export_student(module, tmp_path / "new", formats="hf", quantize="int8")
    assert not (tmp_path / "new").exists()


@pytest.fixture(scope="module")
def mnist_teacher_run(tmp_path_factory, tiny_mnist):
    """A real `lkd fit` of configs/mnist/teacher.yaml on the tiny data: (its checkpoint, the data overrides)."""
    import os

    from tests.mnist_fixtures import mnist_tiny_args

    folder = tmp_path_factory.mktemp("mnist_run")
    data = mnist_tiny_args(tiny_mnist)
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        cli = LKDCLI(args=["fit", "-c", str(CONFIGS / "mnist" / "teacher.yaml"), *data, "--trainer.max_epochs=1",
                           "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1", "--trainer.num_sanity_val_steps=0"])
    finally:
        os.chdir(cwd)
    latest = next(cb for cb in cli.trainer.checkpoint_callbacks if cb.filename == "latest")
    return folder / latest.best_model_path, data, cli.model


def test_lkd_export_of_an_mnist_checkpoint_round_trips_in_lkd_and_onnxruntime(tmp_path, mnist_teacher_run):
    import onnxruntime as ort

    ckpt, data, _ = mnist_teacher_run
    to = tmp_path / "mnist"
    LKDCLI(args=["export", "-c", str(CONFIGS / "mnist" / "teacher.yaml"), *data, f"--ckpt_path={ckpt}", f"--to={to}",
                 "--format=all", "--quantize=int8"])
    spec = json.loads((to / "lkd_student.json").read_text())
    assert spec["class_path"] == "lkd.models.ConvNet" and spec["init_args"]["num_classes"] == 10
    student = load_student(to)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    for key, value in student.state_dict().items():  # the checkpoint's weights, not the config's fresh ones
        torch.testing.assert_close(value, state[f"model.{key}"], rtol=0, atol=0, msg=key)
    images = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        ref = student(images).numpy()
    for name, tol in (("model.onnx", 1e-4), ("model.int8.onnx", 0.5)):
        out = ort.InferenceSession(str(to / name), providers=["CPUExecutionProvider"]).run(None, {"x": images.numpy()})[0]
        assert abs(out - ref).max() < tol, name
    card = (to / "README.md").read_text()
    assert "trains one model without a teacher" in card and "## Metrics of this checkpoint" in card and "test/acc" in card
    assert f"--ckpt_path {ckpt}" in card and "lkd.load_student" in card


def test_lkd_export_refuses_a_checkpoint_of_another_architecture(tmp_path, mnist_teacher_run):
    ckpt, data, _ = mnist_teacher_run
    with pytest.raises(ExportError, match=r"does not fit this config's model \(MLP\):\n  missing in the checkpoint: .*\n(.*\n)*"
                                          r"HINT: export --ckpt_path .* with the config that trained it"):
        LKDCLI(args=["export", "-c", str(CONFIGS / "mnist" / "teacher_mlp.yaml"), *data, f"--ckpt_path={ckpt}",
                     f"--to={tmp_path / 'x'}", "--test=false"])
    assert not (tmp_path / "x").exists()


def test_dkvb_student_round_trips_through_safetensors_and_onnx(tmp_path):
    """The DKVB's eval path (one batched nearest-key search) exports to ONNX; its keys and values come back."""
    import onnxruntime as ort
    from torch import nn

    from lkd.models import DiscreteKeyValueBottleneck

    init = {"in_features": 784, "num_codebooks": 4, "num_keys": 16, "key_dim": 4, "num_classes": 10}
    holder = nn.Module()
    holder.student = DiscreteKeyValueBottleneck(**init)
    holder.student.train()(torch.rand(64, 784))  # EMA updates: keys that differ from a fresh build
    with torch.no_grad():
        holder.student.values.normal_()
    result = export_student(holder, tmp_path / "dkvb", formats="onnx",
                            spec={"class_path": "lkd.models.DiscreteKeyValueBottleneck", "init_args": init})
    loaded = load_student(result.folder)
    x = torch.rand(7, 784)
    holder.student.eval()
    with torch.no_grad():
        ref = holder.student(x)
        torch.testing.assert_close(loaded(x), ref, rtol=0, atol=0)
    out = ort.InferenceSession(str(result.folder / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    assert abs(out - ref.numpy()).max() < 1e-5


def test_dkvb_on_a_trained_encoder_exports_to_onnx_from_images(tmp_path):
    """The deployable MNIST DKVB student (a DKVB on a frozen ConvNet's features, concat decoder) exports with an
    image input, as its encoder reads it, and onnxruntime gives its logits."""
    import onnxruntime as ort
    from torch import nn

    from lkd.models import ConvNet, DiscreteKeyValueBottleneck, TrainedEncoder

    convnet = {"channels": [4, 8], "convs_per_block": 1, "downsample": "stride", "hidden": 16, "batch_norm": False}
    init = {"in_features": 16, "num_codebooks": 4, "num_keys": 16, "key_dim": 4, "decoder": "concat", "value_dim": 3}
    holder = nn.Module()
    holder.student = DiscreteKeyValueBottleneck(**init, encoder=TrainedEncoder(ConvNet(**convnet)))
    holder.student.train()(torch.randn(64, 1, 28, 28))  # EMA moves the keys
    encoder_spec = {"class_path": "lkd.models.TrainedEncoder",  # as the config has it: a path on the training machine
                    "init_args": {"model": {"class_path": "lkd.models.ConvNet", "init_args": convnet},
                                  "checkpoint": str(tmp_path / "gone" / "student_kd.ckpt")}}
    result = export_student(holder, tmp_path / "dkvb_encoder", formats="onnx",
                            spec={"class_path": "lkd.models.DiscreteKeyValueBottleneck", "init_args": {**init, "encoder": encoder_spec}})
    x = torch.randn(5, 1, 28, 28)
    holder.student.eval()
    with torch.no_grad():
        ref = holder.student(x)
        torch.testing.assert_close(load_student(result.folder)(x), ref, rtol=0, atol=0)  # encoder weights came back too
    out = ort.InferenceSession(str(result.folder / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    assert out.shape == (5, 10) and abs(out - ref.numpy()).max() < 1e-4


@pytest.mark.slow  # ONNX export of a BERT, then a transformers pipeline: 6-12 s each
@pytest.mark.parametrize("num_classes", [2, 1])
def test_glue_student_becomes_a_sequence_classification_folder_that_pipeline_runs(tmp_path, num_classes):
    from torch import nn
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    from lkd.models import TransformerClassifier
    from tests.glue_fixtures import MINILM, TINY_BERT

    torch.manual_seed(0)
    holder = nn.Module()
    holder.student = TransformerClassifier(num_classes, MINILM, pretrained=False, config_overrides=TINY_BERT).eval()
    names = ["negative", "positive"] if num_classes == 2 else None
    result = export_student(holder, tmp_path / "glue", formats="onnx", label_names=names)
    assert result.kind == "sequence_classifier" and not (result.folder / "lkd_student.json").exists()
    hf = AutoModelForSequenceClassification.from_pretrained(str(result.folder)).eval()
    tok = AutoTokenizer.from_pretrained(str(result.folder))
    batch = tok(["a fine film", "dull and far too long"], padding=True, return_tensors="pt")
    with torch.no_grad():
        ours = holder.student(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids")).logits
        torch.testing.assert_close(hf(**batch).logits, ours, rtol=0, atol=1e-5)
    assert result.max_abs_diff["onnx"] < 1e-4
    loaded = load_student(result.folder)  # the folder's architecture picks the class (not a causal LM head)
    assert type(loaded).__name__ == type(hf).__name__
    torch.testing.assert_close(loaded(**batch).logits, ours, rtol=0, atol=1e-5)
    if num_classes == 2:
        assert hf.config.id2label == {0: "negative", 1: "positive"}
        out = pipeline("text-classification", model=str(result.folder), device="cpu")("a fine film")
        assert out[0]["label"] == names[int(ours[0].argmax())]
    else:
        assert hf.config.problem_type == "regression" and hf.config.num_labels == 1


@pytest.mark.slow  # the lm_export fixture, then lm-eval
def test_lm_evaluation_harness_scores_the_exported_folder_as_counted_by_hand(lm_export, tmp_path):
    """lm-eval (model type hf) on the exported byte-level student: its bits per byte equal Σ NLL / (ln 2 · bytes)
    computed here from the student itself, each document predicted from the tokenizer's prefix token."""
    import math

    from lkd.evaluation import lm_eval_perplexity

    module, result = lm_export
    docs = ["The cat sat on the mat.", "", "Résumé: naïve café", "A third line of text."]
    scores = lm_eval_perplexity(result.folder, docs, batch_size=2, workdir=tmp_path)
    nll = nbytes = 0.0
    with torch.no_grad():
        for doc in (d for d in docs if d):
            ids = torch.tensor([[256, *doc.encode()]])  # prefix token (end of text), then the bytes
            logp = module.student(input_ids=ids).logits.log_softmax(-1)[0, :-1].gather(-1, ids[0, 1:, None])
            nll, nbytes = nll - float(logp.sum()), nbytes + len(doc.encode())
    assert scores["documents"] == 3
    assert scores["bits_per_byte"] == pytest.approx(nll / (math.log(2) * nbytes), rel=1e-4)
    assert scores["byte_perplexity"] == pytest.approx(math.exp(nll / nbytes), rel=1e-4)


def test_lkd_export_of_an_lm_config_writes_a_folder_transformers_loads(tmp_path, monkeypatch, tiny_wikitext):
    from transformers import AutoModelForCausalLM

    from tests.lm_fixtures import tiny_overrides

    monkeypatch.chdir(tmp_path)
    config = CONFIGS / "lm" / "student_scratch.yaml"
    tiny = tiny_overrides(config, tiny_wikitext)
    cli = LKDCLI(args=["fit", "-c", str(config), *tiny, "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
                       "--trainer.num_sanity_val_steps=0", "--best_checkpoint.path=student.ckpt"])
    LKDCLI(args=["export", "-c", str(config), *tiny, "--ckpt_path=student.ckpt", "--to=out"])
    loaded = AutoModelForCausalLM.from_pretrained("out").eval()
    ids = torch.randint(0, VOCAB, (1, 10))
    state = torch.load("student.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    cli.model.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, cli.model.model(input_ids=ids).logits, rtol=0, atol=1e-5)
    card = Path("out/README.md").read_text()
    assert "test/ppl" in card and "TextDataModule" in card and "lkd export --config" in card


class Branchy(torch.nn.Module):
    """A network torch.export cannot trace (its forward branches on a tensor's value)."""

    in_features = 4

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 2)

    def forward(self, x):
        return self.linear(x) if float(x.sum()) > 0 else -self.linear(x)


def test_an_architecture_without_an_onnx_exporter_names_the_formats_it_supports(tmp_path):
    holder = torch.nn.Module()
    holder.student = Branchy()
    with pytest.raises(ExportError, match=r"Branchy could not be exported to ONNX .*It exports as --format hf"):
        export_student(holder, tmp_path / "b", formats="onnx", spec={"class_path": "tests.test_export.Branchy", "init_args": {}})


@pytest.mark.slow  # two ONNX exports of a BERT and the transformer optimizer: about 15 s each
@pytest.mark.parametrize("fusable", [True, False])
def test_a_bert_students_int8_file_runs_fused_int8_attention_in_onnxruntime(tmp_path, monkeypatch, fusable):
    import onnx
    import onnxruntime as ort
    from torch import nn

    import lkd.export.int8 as int8
    from lkd.models import TransformerClassifier
    from tests.glue_fixtures import MINILM, TINY_BERT

    if not fusable:
        monkeypatch.setattr(int8, "FUSABLE", ())
    torch.manual_seed(0)
    holder = nn.Module()
    holder.student = TransformerClassifier(2, MINILM, pretrained=False, config_overrides=TINY_BERT).eval()
    result = export_student(holder, tmp_path / "glue", formats="onnx", quantize="int8")
    assert result.int8_graph == ("fused attention" if fusable else "plain")
    ops = {n.op_type for n in onnx.load(str(result.files["onnx_int8"])).graph.node}
    assert ("QAttention" in ops) == fusable and ops & {"MatMulInteger", "DynamicQuantizeMatMul"}
    assert holder.student.encoder.config._attn_implementation == "sdpa"  # the student's attention is put back
    ids = torch.randint(5, 1000, (3, 40))  # longer than the export's example: dynamic axes
    mask = torch.ones_like(ids)
    mask[1, 25:] = 0
    with torch.no_grad():
        ref = holder.student(ids, mask).logits
    out = ort.InferenceSession(str(result.files["onnx_int8"]), providers=["CPUExecutionProvider"]).run(
        None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    assert abs(out - ref.numpy()).max() < 0.1 * max(1.0, float(ref.abs().max()))
    assert ("QAttention" in (result.folder / "README.md").read_text()) == fusable
