"""Measurements shared by the demo, the benchmarks, the notebook and the LM test report: bits per byte, timing (a
burn-in, then a timed stage, on the same inputs for every model compared) and peak memory, TensorBoard scalars, a
Mixture-of-Experts teacher's expert specialisation, lm-evaluation-harness perplexity."""

from __future__ import annotations

import math
import resource
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


@torch.inference_mode()
def bits_per_byte(model: nn.Module, loader, token_bytes: torch.Tensor, *, side: str = "student",
                  max_batches: int | None = None) -> dict[str, float]:
    """Bits per byte (and perplexity per own token) of a causal LM over a text loader, as the training modules
    count them: every predicted token (positions 1..length−1 of each block), nats / (ln 2 · the UTF-8 bytes those
    tokens spell).

    Args:
        model: a transformers causal LM (or anything returning ``.logits`` for ``input_ids``).
        loader: batches of :class:`lkd.data.text.TokenBlocks` or :class:`lkd.data.text.AlignedTokenBlocks`.
        token_bytes: (V,) bytes per token id (:func:`lkd.tokenizers.token_byte_lengths`).
        side: ``"student"`` reads ``input_ids``, ``"teacher"`` reads ``teacher_input_ids`` (aligned blocks).
    Returns:
        ``{"bpb", "ppl", "nll_sum", "tokens", "bytes", "seconds"}``.
    """
    from lkd.losses.lm import predicted_mask, token_logprobs

    ids_key, length_key = ("input_ids", "length") if side == "student" else ("teacher_input_ids", "teacher_length")
    was_training = model.training
    model.eval()
    nll = tokens = nbytes = 0.0
    start = time.perf_counter()
    try:
        for i, batch in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            device = next(model.parameters()).device
            ids = batch[ids_key].to(device)
            lengths = batch[length_key].to(device) if length_key in batch else torch.full((len(ids),), ids.shape[1], device=device)
            mask = predicted_mask(lengths, ids.shape[1])
            lp = token_logprobs(model(input_ids=ids).logits, ids)
            nll -= float((lp * mask).sum())
            tokens += float(mask.sum())
            nbytes += float((token_bytes.to(device)[ids] * mask).sum())
    finally:
        model.train(was_training)
    return {"bpb": nll / (math.log(2) * max(nbytes, 1.0)), "ppl": math.exp(nll / max(tokens, 1.0)), "nll_sum": nll,
            "tokens": tokens, "bytes": nbytes, "seconds": time.perf_counter() - start}


# ---- timing and memory (the LM test report, lkd.callbacks.DistillationReport, and the benchmark scripts) ------
def seconds_per_call(fn: Callable[[], object], *, repeats: int = 3, burn_in: int = 1, device: torch.device | None = None) -> float:
    """Mean wall-clock seconds of ``fn()`` over ``repeats`` calls after ``burn_in`` untimed ones (CUDA synced)."""
    sync = torch.cuda.synchronize if device is not None and device.type == "cuda" else (lambda: None)
    for _ in range(burn_in):
        fn()
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - start) / max(repeats, 1)


@torch.no_grad()
def tokens_per_second(model: torch.nn.Module, input_ids: torch.Tensor, *, repeats: int = 3) -> float:
    """Tokens/s of a no-grad forward of a causal LM on ``input_ids`` (B, T)."""
    return input_ids.numel() / seconds_per_call(lambda: model(input_ids=input_ids), repeats=repeats, device=input_ids.device)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: the CUDA allocator's peak on a GPU, else the resident-set peak (Linux: KiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _one_pass(model: nn.Module, inputs: torch.Tensor, batch_size: int) -> float:
    start = time.perf_counter()
    for chunk in inputs.split(batch_size):
        model(chunk)
    if inputs.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


@torch.inference_mode()
def interleaved_inference_seconds(
    models: dict[str, nn.Module], inputs: torch.Tensor, *, batch_size: int = 1000, repeats: int = 7
) -> dict[str, float]:
    """Median seconds per pass over ``inputs`` for each model, the models taking turns in every repeat, so a
    noisy machine slows them alike and their ratios stay meaningful. One warm-up pass each; eval mode."""
    modes = {name: m.training for name, m in models.items()}
    times: dict[str, list[float]] = {name: [] for name in models}
    try:
        for m in models.values():
            m.eval()
            _one_pass(m, inputs, batch_size)
        for _ in range(repeats):
            for name, m in models.items():
                times[name].append(_one_pass(m, inputs, batch_size))
    finally:
        for name, m in models.items():
            m.train(modes[name])
    return {name: statistics.median(t) for name, t in times.items()}


def read_scalars(log_dir, tags: list[str] | None = None) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` from the TensorBoard event files under ``log_dir`` (all runs inside it
    merged by tag; a tag that no run logged is absent). For plots in notebooks and reports."""
    from pathlib import Path

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[tuple[int, float]]] = {}
    for folder in sorted({p.parent for p in Path(log_dir).rglob("events.out.tfevents.*")}):
        acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            if tags is None or tag in tags:
                out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return {tag: sorted(values) for tag, values in out.items()}


@torch.inference_mode()
def expert_specialisation(teacher: nn.Module, batches) -> dict[str, float]:
    """How much a Mixture-of-Experts LM's experts specialise, from next-token losses over ``batches``
    (iterables of ``{"input_ids": (B, T)}``):

    * ``nll_own``: its loss with its own routing; ``nll_next_best``: forced to the experts its gate ranks k+1..2k
      (:class:`lkd.models.routing.RankedExperts`); ``nll_random``: k experts drawn uniformly per token. A
      teacher whose experts are interchangeable loses little when forced elsewhere; routing can only matter when
      ``nll_next_best − nll_own`` is large.
    * ``usage_entropy``: entropy of the share of top-k slots each expert gets, over log E (1: all used equally);
      ``gate_entropy``: mean per-token entropy of the gate distribution, over log E (low: confident routing).
    """
    from lkd.losses.lm import lm_cross_entropy
    from lkd.models.routing import RandomExperts, RankedExperts, moe_gates, route_teacher

    gates = moe_gates(teacher)
    E, k = int(gates[0].num_experts), int(gates[0].top_k)
    was_training = teacher.training
    teacher.eval()
    sums = {"own": 0.0, "next_best": 0.0, "random": 0.0}
    counts = torch.zeros(E)
    gate_entropy, n_batches = 0.0, 0
    try:
        for batch in batches:
            ids = batch["input_ids"].to(next(teacher.parameters()).device)
            out = teacher(input_ids=ids, output_router_logits=True)
            sums["own"] += float(lm_cross_entropy(out.logits, ids))
            probs = torch.cat([F.softmax(r.float(), dim=-1) for r in out.router_logits])  # (L·N, E)
            counts += torch.bincount(probs.topk(k, dim=-1).indices.flatten().cpu(), minlength=E).float()
            gate_entropy += float(-(probs * probs.clamp_min(1e-12).log()).sum(-1).mean()) / math.log(E)
            for name, routing in (("next_best", RankedExperts(first_rank=k)), ("random", RandomExperts())):
                with route_teacher(teacher, routing):
                    sums[name] += float(lm_cross_entropy(teacher(input_ids=ids).logits, ids))
            n_batches += 1
    finally:
        teacher.train(was_training)
    share = counts / counts.sum()
    result = {f"nll_{name}": value / n_batches for name, value in sums.items()}
    return result | {"usage_entropy": float(-(share * share.clamp_min(1e-12).log()).sum()) / math.log(E),
                     "gate_entropy": gate_entropy / n_batches, "num_experts": E, "top_k": k}


def lm_eval_perplexity(folder, texts, *, max_length: int | None = None, batch_size: int = 8, limit: int | None = None,
                       workdir=None) -> dict[str, float]:
    """An exported causal-LM folder evaluated by lm-evaluation-harness (``lm_eval``, model type ``hf``) on a local
    task over ``texts`` (one document each; empty ones dropped), as its ``wikitext`` task counts:
    ``loglikelihood_rolling`` over each document (disjoint windows of ``max_length`` tokens, the first predicted
    after the tokenizer's prefix token), ``bits_per_byte`` = Σ NLL / (ln 2 · Σ UTF-8 bytes), ``byte_perplexity``,
    ``word_perplexity``.

    How it differs from lkd's ``test/bpb`` over :class:`lkd.data.text.TextDataModule` blocks: lkd concatenates the
    rows (an end-of-text token after each, whose NLL counts and whose bytes are 0), cuts fixed blocks and does not
    predict a block's first token; lm-eval scores each row on its own, every token, from the row's start.

    Returns ``{"bits_per_byte", "byte_perplexity", "word_perplexity", "documents"}``.
    """
    import json
    import tempfile
    from pathlib import Path

    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    docs = [t for t in texts if t and t.strip()]
    if limit is not None:
        docs = docs[:limit]
    if not docs:
        raise ValueError("lm_eval_perplexity: no non-empty documents to evaluate")
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        tmp = Path(tmp)
        (tmp / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
        (tmp / "lkd_local_text.yaml").write_text("\n".join([
            "task: lkd_local_text", "dataset_path: json", "dataset_kwargs:", "  data_files:", f"    test: {tmp / 'docs.jsonl'}",
            "test_split: test", "output_type: loglikelihood_rolling", 'doc_to_text: ""', 'doc_to_target: "{{text}}"',
            "metric_list:", "  - metric: word_perplexity", "  - metric: byte_perplexity", "  - metric: bits_per_byte",
            "metadata:", "  version: 1.0", ""]))
        model_args = f"pretrained={folder},dtype=float32" + (f",max_length={max_length}" if max_length else "")
        results = simple_evaluate(model="hf", model_args=model_args, tasks=["lkd_local_text"], batch_size=batch_size,
                                  device="cpu", task_manager=TaskManager(include_path=str(tmp), include_defaults=False),
                                  bootstrap_iters=0, verbosity="ERROR")
    metrics = results["results"]["lkd_local_text"]
    pick = lambda name: float(next(v for k, v in metrics.items() if k.split(",")[0] == name))  # noqa: E731 - "name,none"
    return {"bits_per_byte": pick("bits_per_byte"), "byte_perplexity": pick("byte_perplexity"),
            "word_perplexity": pick("word_perplexity"), "documents": len(docs)}
