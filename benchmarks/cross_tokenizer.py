"""Cross-tokenizer distillation benchmark: the pretrained SmolLM2-135M teaches a small Llama student that uses
another tokenizer (an 8,192-token byte-level BPE trained on the training split), from a teacher cache.

    OMP_NUM_THREADS=2 python benchmarks/cross_tokenizer.py              # results/cross_tokenizer.json, BENCHMARKS.md
    python benchmarks/cross_tokenizer.py --seeds 0 --max-steps 100 --rows alone alm --results-dir runs/ct_trial

Models and data are those of ``configs/lm/cross_tokenizer_smollm2.yaml`` (read from it): WikiText-2 offline
(train on ``validation[:90%]``, test on ``test``), aligned blocks of at most 128 student and 128 teacher tokens,
batch 8, AdamW, cosine schedule, the same epochs for every row. Stages:

1. the teacher caches (``lkd cache-teacher``'s code; reused when present): SmolLM2 over the training and
   validation blocks of (SmolLM2, BPE-8192) and of (SmolLM2, SmolLM2) for the reference row; each cache
   records the teacher's seconds, summed over resumed sessions;
2. the teacher's own test bits per byte (live, once; kept in ``--workdir``);
3. rows × seeds: each student trained on the cached targets, then its test bits per byte
   (:func:`lkd.evaluation.bits_per_byte`, the counting of the training modules);
4. timing: ``--timing-steps`` training steps per mode, ``--repeats`` interleaved rounds, median seconds as a
   ratio to the student-only step (alignment, cache reads and losses included).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from benchmarks import common  # noqa: E402
from benchmarks.report import column, table  # noqa: E402
from lkd.cache import TeacherCache  # noqa: E402
from lkd.data.text import TextDataModule  # noqa: E402
from lkd.evaluation import bits_per_byte  # noqa: E402
from lkd.memory import count_parameters  # noqa: E402
from lkd.models.causal_lm import SmolLM2, TinyLlamaLM  # noqa: E402
from lkd.modules import LMDistillModule  # noqa: E402
from lkd.teacher import Teacher  # noqa: E402
from lkd.tokenizers import token_byte_lengths  # noqa: E402

CONFIG = common.ROOT / "configs" / "lm" / "cross_tokenizer_smollm2.yaml"
SMOLLM2_VOCAB = 49152
# name: (pair, loss weights); pair "bpe" = (SmolLM2 teacher, BPE-8192 student), "same" = SmolLM2's tokenizer on both sides
ROWS = {
    "alone": ("bpe", {"ce": 1.0}),
    "alm": ("bpe", {"alm": 1.0, "ce": 1.0}),
    "uld": ("bpe", {"uld": 1.0, "ce": 1.0}),
    "shared_kl": ("bpe", {"shared_kl": 1.0, "ce": 1.0}),
    "combined": ("bpe", {"alm": 1.0, "shared_kl": 1.0, "ce": 1.0}),  # ULD left out: it raised bpb in a probe
    "same_alone": ("same", {"ce": 1.0}),
    "same_kl": ("same", {"shared_kl": 1.0, "ce": 1.0}),
}
LABELS = {
    "alone": "student alone (BPE-8192, CE)",
    "alm": "ALM + CE",
    "uld": "ULD + CE",
    "shared_kl": "shared-vocabulary KL + CE",
    "combined": "ALM + shared KL + CE",
    "same_alone": "reference: SmolLM2 tokenizer, student alone",
    "same_kl": "reference: SmolLM2 tokenizer, KL + CE (same tokenizer)",
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_seeds_option(p, [0, 1, 2])
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--epochs", type=int, default=None, help="default: the config's max_epochs")
    p.add_argument("--max-steps", type=int, default=-1, help="stop each run after this many steps (a trial)")
    p.add_argument("--alm-temperature", type=float, default=None, help="default: the config's")
    p.add_argument("--timing-steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--test-blocks", type=int, default=None, help="evaluate on the first N test blocks (default: all)")
    p.add_argument("--skip-missing", action="store_true",
                   help="train nothing: report the runs kept in --workdir/runs.jsonl (the per-seed column shows which ran)")
    p.add_argument("--note", default=None, help="a note printed after the command (how the kept runs were made)")
    p.add_argument("--timing-from", type=Path, default=None,
                   help="take the timing rounds from this earlier result file of this script instead of measuring again")
    p.add_argument("--workdir", type=Path, default=common.ROOT / "runs" / "cross_tokenizer")
    common.add_output_options(p)
    return p.parse_args()


def config() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def data(pair: str, cfg: dict, **overrides) -> TextDataModule:
    init = {**cfg["data"]["init_args"], **overrides}
    return TextDataModule(**init)


def pair_tokenizers(pair: str, cfg: dict) -> tuple[str, str]:
    """(student tokenizer, teacher tokenizer)."""
    init = cfg["model"]["init_args"]
    return (init["tokenizer"], init["teacher_tokenizer"]) if pair == "bpe" else ("smollm2", "smollm2")


def cache_path(pair: str, cfg: dict) -> Path:
    path = Path(cfg["model"]["init_args"]["teacher"]["cache"])
    return common.ROOT / (path if pair == "bpe" else path.with_name("smollm2_to_smollm2.topk32.cache"))


def student(pair: str, cfg: dict, seed: int) -> TinyLlamaLM:
    init = dict(cfg["model"]["init_args"]["student"]["init_args"])
    if pair == "same":
        init["vocab_size"] = SMOLLM2_VOCAB
    return TinyLlamaLM(**init, seed=seed)


def module(pair: str, weights: dict, teacher_model, cfg: dict, seed: int, args) -> LMDistillModule:
    init = cfg["model"]["init_args"]
    s_tok, t_tok = pair_tokenizers(pair, cfg)
    opt = init["optimizer"]["init_args"]
    lr = opt["lr"]
    teacher = Teacher(model=teacher_model, cache=str(cache_path(pair, cfg)), cache_top_k=init["teacher"]["cache_top_k"])
    return LMDistillModule(
        student=student(pair, cfg, seed), teacher=teacher, tokenizer=s_tok, teacher_tokenizer=t_tok, loss_weights=weights,
        temperature=init["temperature"], alm_temperature=args.alm_temperature or init["alm_temperature"],
        optimizer=lambda params: torch.optim.AdamW(params, lr=lr, weight_decay=opt.get("weight_decay", 0.01)),
    )


def trainer(cfg: dict, args, callbacks=(), max_steps: int | None = None) -> pl.Trainer:
    return common.quiet_trainer(max_epochs=args.epochs or cfg["trainer"]["max_epochs"],
                                max_steps=args.max_steps if max_steps is None else max_steps,
                                gradient_clip_val=cfg["trainer"].get("gradient_clip_val"), callbacks=list(callbacks))


def ensure_cache(pair: str, teacher_model, cfg: dict, args) -> TeacherCache:
    """Build the pair's cache unless it exists (``lkd cache-teacher``'s code; an interrupted build continues)."""
    path = cache_path(pair, cfg)
    if not path.is_file():
        print(f"building the teacher cache {path} (SmolLM2 over the training and validation blocks)", flush=True)
        module(pair, {"ce": 1.0}, teacher_model, cfg, 0, args).write_teacher_cache(data(pair, cfg), path)
    return TeacherCache.load(path)


def teacher_test(teacher_model, cfg: dict, args) -> dict:
    """The teacher's test bits per byte on the (SmolLM2, BPE) test blocks, computed once and kept."""
    dm = data("bpe", cfg, max_blocks=args.test_blocks)
    s_tok, t_tok = pair_tokenizers("bpe", cfg)
    dm.connect(s_tok, teacher_tokenizer=t_tok)
    blocks = dm.split("test")
    key = f"{len(blocks)} blocks, {dm.cache_identity('train').teacher_tokenizer}"
    cached = args.workdir / "teacher_test.json"
    if cached.is_file() and (kept := json.loads(cached.read_text())).get("key") == key:
        return kept["result"]
    print(f"teacher test pass over {len(blocks)} blocks (live SmolLM2)", flush=True)
    result = bits_per_byte(teacher_model, dm.test_dataloader(), token_byte_lengths(dm.teacher_tokenizer), side="teacher")
    args.workdir.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps({"key": key, "result": result}))
    return result


def run_key(args) -> str:
    """What a kept run must share with this invocation to be reused."""
    return json.dumps({k: getattr(args, k) for k in ("epochs", "max_steps", "alm_temperature", "test_blocks")} |
                      {"config": CONFIG.read_text()}, sort_keys=True)


def kept_runs(args) -> dict[tuple[str, int], dict]:
    path = args.workdir / "runs.jsonl"
    if not path.is_file():
        return {}
    kept = {}
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        if entry.pop("key") == run_key(args):
            kept[(entry["row"], entry["seed"])] = entry
    return kept


def run(row: str, seed: int, teacher_model, cfg: dict, args) -> dict:
    pair, weights = ROWS[row]
    pl.seed_everything(seed, verbose=False)
    model = module(pair, weights, teacher_model, cfg, seed, args)
    dm = data(pair, cfg)
    timer = common.train_timer()
    trainer(cfg, args, [timer]).fit(model, datamodule=dm)
    test_dm = data(pair, cfg, max_blocks=args.test_blocks)
    model.connect_data(test_dm)
    result = bits_per_byte(model.student, test_dm.test_dataloader(), model.token_bytes, side="student")
    out = {"row": row, "seed": seed, "bpb": result["bpb"], "ppl": result["ppl"], "train_s": timer.seconds,
           "steps": len(timer.step_seconds), "params": count_parameters(model.student)}
    print(f"{row} seed {seed}: test bpb {out['bpb']:.4f} ({out['train_s']:.0f} s, {out['steps']} steps)", flush=True)
    return out


def timing(teacher_model, cfg: dict, args) -> common.PairedTiming:
    """Seconds of ``--timing-steps`` training steps per mode, interleaved rounds; ratio to the student alone."""
    modes = {"student alone": ("bpe", ROWS["alone"][1]), "ALM + CE, cached teacher": ("bpe", ROWS["alm"][1]),
             "shared KL + CE, cached teacher": ("bpe", ROWS["shared_kl"][1]),
             "ALM + shared KL + CE, cached teacher": ("bpe", ROWS["combined"][1])}

    def once(mode: str) -> float:
        pair, weights = modes[mode]
        model = module(pair, weights, teacher_model, cfg, 0, args)
        timer = common.train_timer()
        trainer(cfg, args, [timer], max_steps=args.timing_steps + 2).fit(model, datamodule=data(pair, cfg))
        return sum(timer.step_seconds[2:])  # the first two steps warm up

    return common.paired_timing({m: (lambda m=m: once(m)) for m in modes}, baseline="student alone", repeats=args.repeats)


def section(results: list[dict], teacher: dict, caches: dict, timed: common.PairedTiming | None, args, cfg) -> dict:
    by_row: dict[str, list[dict]] = {}
    for r in results:
        by_row.setdefault(r["row"], []).append(r)
    rows = [{"name": "teacher: SmolLM2-135M (pretrained, its own tokenizer)", "bpb": [teacher["bpb"]],
             "params": teacher["params"], "train_s": None}]
    timed_rows = {"alone": "student alone", "alm": "ALM + CE, cached teacher", "shared_kl": "shared KL + CE, cached teacher",
                  "combined": "ALM + shared KL + CE, cached teacher"}
    cache_of = {"bpe": "(SmolLM2, BPE-8192)", "same": "(SmolLM2, SmolLM2)"}
    for row in ROWS:
        if row not in by_row:
            continue
        runs = sorted(by_row[row], key=lambda r: r["seed"])
        pair, weights = ROWS[row]
        distills = any(k != "ce" for k in weights)
        rows.append({"name": LABELS[row], "bpb": [r["bpb"] for r in runs], "params": runs[0]["params"],
                     "train_s": statistics.mean(r["train_s"] for r in runs),
                     "step_ratio": timed.ratio(timed_rows[row]) if timed is not None and row in timed_rows else None,
                     "cache_bpt": caches.get(cache_of[pair], {}).get("bytes_per_token") if distills else None})
    result = common.new_result("Cross-tokenizer distillation", args, seeds=args.seeds, threads=True)
    if args.note:
        result["command_note"] = args.note
    del cfg
    mean = lambda row: statistics.mean(r["bpb"] for r in by_row[row]) if row in by_row else None  # noqa: E731
    std = lambda row: statistics.stdev([r["bpb"] for r in by_row[row]]) if row in by_row and len(by_row[row]) > 1 else 0.0  # noqa: E731
    cache_lines = [f"{name}: {c['bytes_per_token']:.0f} bytes per teacher token, teacher {c['teacher_seconds'] / 60:.1f} min "
                   f"for {c['batches']} batches of 8 blocks" for name, c in caches.items()]
    intro = [
        "The pretrained SmolLM2-135M (its own 49,152-token byte-level BPE) teaches a 4-layer Llama student (hidden 256) "
        "that uses **another tokenizer**: an 8,192-token byte-level BPE trained on the training split. WikiText-2 offline: "
        "train on `validation[:90%]`, test on `test`; both tokenise the same text, cut at common token boundaries into "
        "blocks of at most 128 tokens a side (`configs/lm/cross_tokenizer_smollm2.yaml`). The teacher runs once, into a "
        "cache of its token log-probabilities and top-32 per position (T = 1); every row trains the same epochs from it. "
        "Bits per byte (lower is better) count every predicted token's NLL over the UTF-8 bytes it spells, so the rows "
        "with different tokenizers compare. The reference rows are the same transformer body with SmolLM2's tokenizer "
        "(a larger embedding table: see the parameters), distilled by KL over the teacher's top-32 plus a tail bucket "
        "(the `shared_kl` loss, which is the plain top-k KL when both sides share the tokenizer).",
        "Teacher caches: " + "; ".join(cache_lines) + ".",
    ]
    columns = [column("row", "name"), column("test bits per byte", "bpb", format="{:.4f}", aggregate="mean_std"),
               column("per seed", "bpb", format="{:.4f}", aggregate="list"), column("parameters", "params", format="{:,}"),
               column("train time (s, mean)", "train_s", format="{:.0f}"),
               column("step vs student alone", "step_ratio", format="{:.2f}×", missing=""),
               column("cache bytes / teacher token", "cache_bpt", format="{:.0f}", missing="")]
    tables = [table(columns, rows)]
    if timed is not None:
        timing_cols = [column("mode", "name"), *common.timing_columns(f"{args.timing_steps} steps (s, median)", "rounds (s)",
                                                                      "vs student alone")]
        tables.append(table(timing_cols, [{"name": n, **timed.row(n)} for n in timed.seconds],
                            caption="Training steps from the cache (alignment, cache reads and losses included):"))
    notes = []
    if mean("alone") is not None:
        alone, alone_std = mean("alone"), std("alone")
        distilled = {r: mean(r) for r in ("alm", "uld", "shared_kl", "combined") if mean(r) is not None}
        if distilled:
            best = min(distilled, key=distilled.get)
            gain = alone - distilled[best]
            margin = gain / max(std(best), alone_std, 1e-9)
            n_seeds = min(len(by_row[best]), len(by_row["alone"]))
            line = (f"Target 1 (best cross-tokenizer student beats the student alone by > 2 std, 3 seeds): best is "
                    f"{LABELS[best]}, {distilled[best]:.4f} vs {alone:.4f} bpb over {n_seeds} seeds, a gain of {gain:.4f} = "
                    f"{margin:.1f} std (the larger of the two rows' std) ({'met' if margin > 2 and n_seeds >= 3 else 'not met'}).")
            if mean("same_alone") is not None and mean("same_kl") is not None:
                same_gain = mean("same_alone") - mean("same_kl")
                kept = gain / same_gain if same_gain > 0 else float("nan")
                line += (f" Same-tokenizer KD gains {same_gain:.4f} bpb ({mean('same_alone'):.4f} → {mean('same_kl'):.4f}, "
                         f"{min(len(by_row['same_alone']), len(by_row['same_kl']))} seeds); "
                         f"the cross-tokenizer student keeps {100 * kept:.0f} % of that gain (target ≥ 70 %: "
                         f"{'met' if kept >= 0.7 else 'not met'}).")
            notes.append(line)
    if timed is not None:
        worst = max(timed.ratio(n) for n in timed.seconds if n != "student alone")
        notes.append(f"Target 2 (a distillation step from the cache ≤ 1.3× a student-only step): worst mode "
                     f"{worst:.2f}× ({'met' if worst <= 1.3 else 'not met'}).")
    result.update(intro=intro, tables=tables, notes=notes,
                  data={"runs": results, "teacher": teacher, "caches": caches,
                        "timing": None if timed is None else timed.seconds})
    return result


def main() -> None:
    args = parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    cfg = config()
    teacher_model = SmolLM2()
    caches = {}
    for pair in sorted({ROWS[r][0] for r in args.rows}):
        cache = ensure_cache(pair, teacher_model, cfg, args)
        split = cache.content["splits"]["train"]
        dm = data(pair, cfg)
        dm.connect(*pair_tokenizers(pair, cfg)[:1], teacher_tokenizer=pair_tokenizers(pair, cfg)[1])
        teacher_tokens = int(dm.split("train").tensors["teacher_length"].sum())  # real (unpadded) teacher positions
        stored = sum(t.numel() * t.element_size() for t in split.values() if isinstance(t, torch.Tensor))
        build = cache.content.get("build", {})
        caches[{"bpe": "(SmolLM2, BPE-8192)", "same": "(SmolLM2, SmolLM2)"}[pair]] = {
            "bytes_per_token": stored / teacher_tokens, "teacher_seconds": build.get("teacher_seconds", float("nan")),
            "batches": build.get("batches", 0), "teacher_tokens": teacher_tokens}
    teacher = teacher_test(teacher_model, cfg, args) | {"params": count_parameters(teacher_model)}
    print(f"teacher test bpb {teacher['bpb']:.4f}", flush=True)
    results = []
    done = kept_runs(args)  # runs finished by an earlier, interrupted invocation with the same settings
    for row in args.rows:
        for seed in args.seeds:
            if (row, seed) in done:
                print(f"{row} seed {seed}: kept from {args.workdir / 'runs.jsonl'}", flush=True)
                results.append(done[(row, seed)])
                continue
            if args.skip_missing:
                continue
            results.append(run(row, seed, teacher_model, cfg, args))
            with (args.workdir / "runs.jsonl").open("a") as f:
                f.write(json.dumps({"key": run_key(args), **results[-1]}) + "\n")
    if args.timing_from is not None:  # the rounds an earlier run of this script measured (same settings)
        timed = common.PairedTiming(json.loads(args.timing_from.read_text())["data"]["timing"], baseline="student alone")
    else:
        timed = timing(teacher_model, cfg, args) if args.repeats > 0 and args.timing_steps > 0 else None
    common.finish(section(results, teacher, caches, timed, args, cfg), "cross_tokenizer", args)


if __name__ == "__main__":
    main()
