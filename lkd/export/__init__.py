"""Students out of lkd, as folders that other tools run (issue 17): Hugging Face folders, ONNX, int8, a card.

    lkd export --config configs/lm/student_kd.yaml --ckpt_path checkpoints/lm/student_kd.ckpt --to exported/lm_kd
    lkd export --config configs/mnist/student_kd.yaml --ckpt_path checkpoints/mnist/student_kd.ckpt --to out \\
        --format all --quantize int8

What a folder holds, by student:

* **causal LMs** (the LM track's students): ``save_pretrained`` of the transformers model (``model.safetensors``,
  ``config.json``, ``generation_config.json``) and its tokenizer, so ``AutoModelForCausalLM.from_pretrained(DIR)``
  and ``pipeline("text-generation", model=DIR)`` load it offline. lkd's byte tokenizer is written as an
  equivalent byte-level ``tokenizer.json`` (:func:`lkd.tokenizers.byte_tokenizer_fast`).
* **text classifiers** without a DKVB on a BERT-like encoder (the GLUE students): an
  ``AutoModelForSequenceClassification`` folder with ``id2label`` / ``label2id`` (or the regression head), weight
  for weight (:func:`hf_sequence_classifier`), so ``pipeline("text-classification", model=DIR)`` runs it.
* **every other student** (the MNIST MLP / ConvNet / DKVB students, text classifiers with a DKVB):
  ``model.safetensors`` and ``lkd_student.json`` (its ``class_path`` and ``init_args``), which
  :func:`load_student` builds back without the Lightning checkpoint and without pickles.
* ``model.onnx`` (``--format onnx``; dynamic batch and sequence axes, torch's dynamo exporter) and
  ``model.int8.onnx`` (``--quantize int8``: onnxruntime's dynamic quantization of the weights), each checked in
  onnxruntime against the student's own outputs when written (the largest difference goes into the card).
* ``README.md``: the model card (what was distilled from what, data, method, losses, metrics, sizes, commands).
* ``lkd_export.json``: the manifest (lkd's version, what the folder is, the files the export wrote); every file
  written, ONNX external data (``model.onnx.data``) included, is listed there, in the card and in
  ``ExportResult.files``. Files are readable by all (``0o666`` less the umask, like any file ``open`` makes).

The folder is lkd's own, and an export never loses a file it did not write (issue 27). ``--to`` must be a new or
empty folder; with ``--overwrite`` it may also hold an earlier lkd export, of which only the files its manifest
lists are removed (every other file stays, and is named in the log). Refused before anything is loaded or written:
a file, the working folder or any of its parents, the home folder, the filesystem root, a folder holding the
checkpoint being exported or any ``*.ckpt``, and a non-empty folder that is not an lkd export (even with
``--overwrite``). A folder exported before the manifest existed is recognised by its model card (``README.md``
starting ``# <name>`` then "... with lkd (Lightning Knowledge Distillation)") next to ``model.safetensors`` and
``lkd_student.json`` or ``config.json``; ``--overwrite`` removes from it only the names in :data:`LEGACY_FILES`
(and weight shards). The export is written into a temporary folder beside ``--to`` and moved in when complete,
so a failed export (an ONNX exporter error, say) leaves the folder as it was.

Only the student leaves: for a distillation module its ``student``, for a module that trains one model alone
(``ClassifierModule``, ``GLUEClassifierModule``, ``CausalLMModule``) that model, said so in the card.
"""

from lkd.export.card import model_card
from lkd.export.folder import LEGACY_FILES, MANIFEST, check_request, previous_export, read_manifest
from lkd.export.int8 import quantize_int8
from lkd.export.onnx import LogitsOnly, TextLogits, example_inputs, export_onnx
from lkd.export.result import ONNX_TOLERANCE, STUDENT_SPEC, ExportError, ExportResult, Format
from lkd.export.saving import check_safetensors, hf_sequence_classifier, load_student
from lkd.export.student import check_student_state, export_student, student_network

__all__ = ["LEGACY_FILES", "MANIFEST", "ONNX_TOLERANCE", "STUDENT_SPEC", "ExportError", "ExportResult", "Format", "LogitsOnly",
           "TextLogits", "check_request", "check_safetensors", "check_student_state", "example_inputs", "export_onnx",
           "export_student", "hf_sequence_classifier", "load_student", "model_card", "previous_export", "quantize_int8",
           "read_manifest", "student_network"]
