"""Pretrained students: students made from the pretrained SmolLM2-135M-Instruct (pruned in depth or width, Minitron-style,
or moved to another tokenizer), retrained with cross-entropy or distilled from SmolLM2, in test bits per byte.

    OMP_NUM_THREADS=2 python benchmarks/pretrained_students.py     # resumes from runs/pretrained_students/runs.jsonl
    python benchmarks/pretrained_students.py --rows depth_kd --seeds 0 --steps 10 --results-dir runs/ps_trial   # a trial

WikiText-2 offline: train on ``validation[:90%]`` (the first ``steps × batch`` blocks of 128 tokens: one epoch, the same
blocks and steps for every row of a student), test on the first ``--test-blocks`` blocks of ``test``. Stages:

1. the teacher caches (``lkd cache-teacher``'s code, reused when present): SmolLM2's top-32 log-probabilities per
   position over the training blocks of (SmolLM2, SmolLM2) for the pruned students and (SmolLM2, BPE-8192) for the
   moved one;
2. the teacher's own test bits per byte on both block sets (live, once, kept in ``--workdir``);
3. seeds × rows, seed-major (an interrupted run leaves every row with the same seeds): each student built from the
   teacher, trained (bf16 autocast on CPU, AdamW, warm-up then cosine), scored by :func:`lkd.evaluation.bits_per_byte`;
   a row ending in ``untrained`` only scores the student as built. Each finished run is appended to ``runs.jsonl``;
4. inference speed (tokens/s, forward of 8 × 128 tokens, interleaved rounds) of the teacher and the pruned students;
5. lm-evaluation-harness on the exported ``--export-row`` student (seed 0) and on the teacher, over the same test rows.
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

from benchmarks import common  # noqa: E402
from benchmarks.report import column, table  # noqa: E402
from lkd.data.text import TextDataModule  # noqa: E402
from lkd.evaluation import bits_per_byte  # noqa: E402
from lkd.memory import count_parameters  # noqa: E402
from lkd.models.causal_lm import CausalLM, SmolLM2  # noqa: E402
from lkd.models.pruning import Calibration, activation_importance, calibration_batches, prune_llama  # noqa: E402
from lkd.models.vocabulary_transfer import move_to_tokenizer  # noqa: E402
from lkd.modules import LMDistillModule  # noqa: E402
from lkd.teacher import Teacher  # noqa: E402
from lkd.tokenizers import load_tokenizer, token_byte_lengths, train_bpe_if_missing  # noqa: E402

BPE = "checkpoints/lm/wikitext2_bpe8192"  # configs/lm/student_moved_tokenizer.yaml's tokenizer
DATA = dict(train_split="validation[:90%]", val_split="validation[90%:]", test_split="test", block_size=128)
DEPTH = [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 29]  # configs/lm/student_pruned_depth.yaml
WIDTH = dict(intermediate_size=640, num_heads=6)  # configs/lm/student_pruned_width.yaml: ≈ the depth student's size
# student: (pair, how it is made); pair "same" = SmolLM2's tokenizer on both sides, "bpe" = the student reads BPE-8192
STUDENTS = {"depth": ("same", "15 of 30 layers"), "width": ("same", "MLP 1536 → 640 channels, 9 → 6 heads, by activation importance"),
            "moved": ("bpe", "SmolLM2 body, BPE-8192 embedding from the teacher's rows of each token's spelling"),
            "moved_random": ("bpe", "SmolLM2 body, BPE-8192 embedding drawn at random")}
ROWS = {  # row: (student, loss weights; None = scored as built)
    "depth_untrained": ("depth", None), "depth_ce": ("depth", {"ce": 1.0}), "depth_kd": ("depth", {"kl": 1.0}),
    "depth_kd_ce": ("depth", {"kl": 1.0, "ce": 1.0}),
    "width_untrained": ("width", None), "width_ce": ("width", {"ce": 1.0}), "width_kd": ("width", {"kl": 1.0}),
    "width_kd_ce": ("width", {"kl": 1.0, "ce": 1.0}),
    "moved_untrained": ("moved", None), "moved_ce": ("moved", {"ce": 1.0}), "moved_alm_ce": ("moved", {"alm": 1.0, "ce": 1.0}),
    "moved_shared_kl_ce": ("moved", {"shared_kl": 1.0, "ce": 1.0}),
    "moved_random_untrained": ("moved_random", None), "moved_random_ce": ("moved_random", {"ce": 1.0}),
    "moved_random_alm_ce": ("moved_random", {"alm": 1.0, "ce": 1.0}),
}
LOSS_LABELS = {None: "untrained", "ce": "cross-entropy only", "kl": "distilled (forward KL, top-32 cache)",
               "kl+ce": "distilled + cross-entropy", "alm+ce": "ALM + CE", "shared_kl+ce": "shared-vocabulary KL + CE"}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_seeds_option(p, [0, 1, 2])
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--steps", type=int, default=100, help="training steps (one epoch over steps × batch blocks)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--test-blocks", type=int, default=64)
    p.add_argument("--export-row", default="depth_kd", help="the row whose seed-0 student is exported and run by lm-eval")
    p.add_argument("--harness-docs", type=int, default=40, help="test documents lm-evaluation-harness scores")
    p.add_argument("--repeats", type=int, default=3, help="rounds of the inference-speed timing (0: skip)")
    p.add_argument("--skip-missing", action="store_true", help="train nothing: report the runs kept in runs.jsonl")
    p.add_argument("--workdir", type=Path, default=common.ROOT / "runs" / "pretrained_students")
    common.add_output_options(p)
    return p.parse_args()


def tokenizers(pair: str) -> tuple[str, str]:
    """(student tokenizer, teacher tokenizer) of a pair."""
    return (BPE, "smollm2") if pair == "bpe" else ("smollm2", "smollm2")


def data(pair: str, args, *, blocks: int, batch: int | None = None) -> TextDataModule:
    extra = {"teacher_block_size": 128} if pair == "bpe" else {}
    return TextDataModule(**DATA, **extra, batch_size=batch or args.batch, max_blocks=blocks)


def cache_path(pair: str, args) -> Path:
    return common.ROOT / "checkpoints" / "lm" / f"pretrained_students_{pair}_{args.steps * args.batch}.topk32.cache"


class Students:
    """Builds each student from the one teacher in memory (width importance measured once)."""

    def __init__(self, teacher: CausalLM):
        self.teacher, self._importance = teacher, None

    def build(self, student: str, seed: int) -> CausalLM:
        t = self.teacher.model
        if student == "depth":
            return CausalLM(prune_llama(t, keep_layers=DEPTH))
        if student == "width":
            if self._importance is None:
                t.eval()
                self._importance = activation_importance(t, calibration_batches(Calibration(), load_tokenizer("smollm2")))
            return CausalLM(prune_llama(t, **WIDTH, importance=self._importance))
        init = "random" if student == "moved_random" else "spelling"
        model, _ = move_to_tokenizer(t, load_tokenizer(BPE), load_tokenizer("smollm2"), init=init, seed=seed)
        return CausalLM(model)


def module(student: CausalLM, pair: str, weights: dict, teacher: CausalLM, args) -> LMDistillModule:
    s_tok, t_tok = tokenizers(pair)
    return LMDistillModule(
        student=student, teacher=Teacher(model=teacher, cache=str(cache_path(pair, args)), cache_top_k=32), tokenizer=s_tok,
        teacher_tokenizer=t_tok if pair == "bpe" else None, loss_weights=weights, temperature=1.0,
        optimizer=lambda params: torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01),
    )


def ensure_cache(pair: str, teacher: CausalLM, args) -> None:
    path = cache_path(pair, args)
    if not path.is_file():
        print(f"building the teacher cache {path}", flush=True)
        student = Students(teacher).build("depth" if pair == "same" else "moved", 0)
        module(student, pair, {"ce": 1.0}, teacher, args).write_teacher_cache(data(pair, args, blocks=args.steps * args.batch), path)


def test_loader(pair: str, args):
    dm = data(pair, args, blocks=args.test_blocks, batch=8)
    dm.connect(*tokenizers(pair)[:1], teacher_tokenizer=tokenizers(pair)[1] if pair == "bpe" else None)
    dm.setup("test")
    return dm


def teacher_test(pair: str, teacher: CausalLM, args) -> dict:
    kept = args.workdir / f"teacher_test_{pair}_{args.test_blocks}.json"
    if kept.is_file():
        return json.loads(kept.read_text())
    dm = test_loader(pair, args)
    side = "teacher" if pair == "bpe" else "student"
    tok = dm.teacher_tokenizer if pair == "bpe" else dm.tokenizer
    result = bits_per_byte(teacher.model, dm.test_dataloader(), token_byte_lengths(tok), side=side)
    kept.write_text(json.dumps(result))
    return result


def run_key(args) -> str:
    return json.dumps({k: getattr(args, k) for k in ("steps", "batch", "lr", "test_blocks")} |
                      {"depth": DEPTH, "width": WIDTH}, sort_keys=True)



def run(row: str, seed: int, students: Students, args) -> dict:
    student_name, weights = ROWS[row]
    pair = STUDENTS[student_name][0]
    pl.seed_everything(seed, verbose=False)
    student = students.build(student_name, seed)
    timer, steps = common.train_timer(), 0
    if weights is not None:
        model = module(student, pair, weights, students.teacher, args)
        common.quiet_trainer(max_epochs=1, precision="bf16-mixed", gradient_clip_val=1.0, callbacks=[timer]).fit(
            model, datamodule=data(pair, args, blocks=args.steps * args.batch))
        steps = len(timer.step_seconds)
    dm = test_loader(pair, args)
    result = bits_per_byte(student.model, dm.test_dataloader(), token_byte_lengths(dm.tokenizer), side="student")
    out = {"row": row, "seed": seed, "bpb": result["bpb"], "train_s": timer.seconds if steps else 0.0, "steps": steps,
           "params": count_parameters(student.model)}
    if row == args.export_row and seed == args.seeds[0]:
        from lkd.export import export_student

        export_student(model, args.workdir / f"export_{row}", overwrite=True)
    print(f"{row} seed {seed}: test bpb {out['bpb']:.4f} ({out['train_s']:.0f} s, {steps} steps)", flush=True)
    return out


def speed(students: Students, args) -> common.PairedTiming:
    """Inference tokens/s: one forward of 8 × 128 tokens, fp32, no gradient; interleaved rounds."""
    ids = torch.randint(0, 49152, (8, 128), generator=torch.Generator().manual_seed(0))
    models = {"teacher": students.teacher.model, "depth": students.build("depth", 0).model, "width": students.build("width", 0).model}

    def once(model) -> float:
        model.eval()
        with torch.no_grad():
            start = time.perf_counter()
            model(input_ids=ids)
            return time.perf_counter() - start

    return common.paired_timing({k: (lambda m=m: once(m)) for k, m in models.items()}, baseline="teacher", repeats=args.repeats)


def harness(teacher: CausalLM, args) -> dict | None:
    """lm-evaluation-harness bits per byte of the exported student and of the teacher over the first test documents."""
    from lkd.evaluation import lm_eval_perplexity
    from lkd.hub import load_hub_dataset

    folder = args.workdir / f"export_{args.export_row}"
    if not folder.is_dir():
        return None
    kept = args.workdir / f"harness_{args.export_row}_{args.harness_docs}.json"
    if kept.is_file() and kept.stat().st_mtime >= folder.stat().st_mtime:
        return json.loads(kept.read_text())
    teacher_folder = args.workdir / "export_teacher"
    if not (teacher_folder / "config.json").is_file():
        teacher.model.save_pretrained(str(teacher_folder))
        load_tokenizer("smollm2").save_pretrained(str(teacher_folder))
    texts = load_hub_dataset("Salesforce/wikitext", "wikitext-2-raw-v1", split="test")["text"]
    out = {"student": lm_eval_perplexity(folder, texts, max_length=128, batch_size=8, limit=args.harness_docs),
           "teacher": lm_eval_perplexity(teacher_folder, texts, max_length=128, batch_size=8, limit=args.harness_docs)}
    kept.write_text(json.dumps(out))
    return out


def _margin(margin: float, seeds: int) -> str:
    """The gain in std of the rows (target: > 2 std over 3 seeds), or why there is no verdict yet."""
    if seeds < 2:
        return "no std from one seed yet (> 2 std over 3 seeds: open)"
    return f"{margin:+.1f} std (> 2 over 3 seeds: {'met' if margin > 2 and seeds >= 3 else 'not met' if seeds >= 3 else 'open'})"


def _key(weights: dict | None) -> str | None:
    return None if weights is None else "+".join(weights)


def section(results: list[dict], teachers: dict, timed: common.PairedTiming | None, harnessed: dict | None, args) -> dict:
    by_row: dict[str, list[dict]] = {}
    for r in results:
        by_row.setdefault(r["row"], []).append(r)
    mean = lambda row: statistics.mean(r["bpb"] for r in by_row[row]) if row in by_row else None  # noqa: E731
    std = lambda row: statistics.stdev([r["bpb"] for r in by_row[row]]) if len(by_row.get(row, [])) > 1 else 0.0  # noqa: E731
    seeds = lambda row: len(by_row.get(row, []))  # noqa: E731
    rows = []
    for pair, label in (("same", "teacher: SmolLM2-135M-Instruct, its own tokenizer (on the pruned students' blocks)"),
                        ("bpe", "teacher: SmolLM2-135M-Instruct, its own tokenizer (on the moved student's text)")):
        if pair in teachers:
            rows.append({"name": label, "bpb": [teachers[pair]["bpb"]], "params": teachers["params"]})
    for row, (student, weights) in ROWS.items():
        if row not in by_row:
            continue
        runs = sorted(by_row[row], key=lambda r: r["seed"])
        untrained = mean(f"{student}_untrained")
        teacher = teachers.get(STUDENTS[student][0], {}).get("bpb")
        recovered = None
        if weights is not None and untrained is not None and teacher is not None and student in ("depth", "width"):
            recovered = (untrained - mean(row)) / (untrained - teacher)
        rows.append({"name": f"{student} ({STUDENTS[student][1]}): {LOSS_LABELS[_key(weights)]}", "bpb": [r["bpb"] for r in runs],
                     "params": runs[0]["params"], "train_s": statistics.mean(r["train_s"] for r in runs) if weights else None,
                     "recovered": recovered})
    columns = [column("student: training", "name"), column("test bits per byte", "bpb", format="{:.4f}", aggregate="mean_std"),
               column("per seed", "bpb", format="{:.4f}", aggregate="list"), column("parameters", "params", format="{:,}"),
               column("train time (s, mean)", "train_s", format="{:.0f}", missing=""),
               column("pruning loss recovered", "recovered", format="{:.0%}", missing="")]
    tables = [table(columns, rows)]
    if timed is not None:
        tokens = 8 * 128
        speed_rows = [{"name": n, "tps": tokens / timed.median(n), "ratio": 1 / timed.ratio(n)} for n in timed.seconds]
        tables.append(table([column("model", "name"), column("tokens/s (forward, 8 × 128, fp32)", "tps", format="{:.0f}"),
                             column("vs teacher", "ratio", format="{:.2f}×")], speed_rows,
                            caption=f"CPU inference speed, median of {args.repeats} interleaved rounds:"))
    notes = []
    for student in ("depth", "width"):
        ce, best = f"{student}_ce", min((r for r in (f"{student}_kd", f"{student}_kd_ce") if r in by_row), key=mean, default=None)
        if best is None or ce not in by_row or f"{student}_untrained" not in by_row or "same" not in teachers:
            continue
        margin = (mean(ce) - mean(best)) / max(std(ce), std(best), 1e-9)
        recovered = (mean(f"{student}_untrained") - mean(best)) / (mean(f"{student}_untrained") - teachers["same"]["bpb"])
        n = min(seeds(ce), seeds(best))
        notes.append(f"Target ({student}-pruned): {LOSS_LABELS[_key(ROWS[best][1])]} {mean(best):.4f} vs cross-entropy "
                     f"{mean(ce):.4f} bpb over {n} seed(s): {_margin(margin, n)}; "
                     f"recovers {recovered:.0%} of what pruning lost (≥ 50 %: {'met' if recovered >= 0.5 else 'not met'}).")
    best = min((r for r in ("moved_alm_ce", "moved_shared_kl_ce") if r in by_row), key=mean, default=None)
    if best is not None and "moved_ce" in by_row and "bpe" in teachers:
        margin = (mean("moved_ce") - mean(best)) / max(std("moved_ce"), std(best), 1e-9)
        ratio = mean(best) / teachers["bpe"]["bpb"]
        n = min(seeds("moved_ce"), seeds(best))
        notes.append(f"Target (moved tokenizer): {LOSS_LABELS[_key(ROWS[best][1])]} {mean(best):.4f} vs cross-entropy "
                     f"{mean('moved_ce'):.4f} bpb over {n} seed(s): {_margin(margin, n)}; "
                     f"{ratio:.3f}× the teacher's {teachers['bpe']['bpb']:.4f} (within 10 %: {'met' if ratio <= 1.1 else 'not met'}).")
    if harnessed is not None:
        s, t = harnessed["student"], harnessed["teacher"]
        notes.append(f"lm-evaluation-harness (model type hf, {s['documents']} test documents, windows of 128 tokens): the exported "
                     f"{args.export_row} student (seed {args.seeds[0]}) {s['bits_per_byte']:.4f} bits per byte, the teacher "
                     f"{t['bits_per_byte']:.4f}; lkd's own numbers above count blocks, not documents (lkd.evaluation.lm_eval_perplexity).")
    result = common.new_result("Pretrained students", args, seeds=args.seeds, threads=True)
    result["intro"] = [
        "Students made from the pretrained SmolLM2-135M-Instruct (`lkd.models.PrunedLM`, `lkd.models.RetokenizedLM`), then "
        f"trained for {args.steps} steps of {args.batch} blocks of 128 tokens (one epoch over the same blocks for every row "
        f"of a student; AdamW lr {args.lr:g}, 5 % warm-up then cosine, bf16 autocast on CPU) either with cross-entropy alone "
        "or distilled from SmolLM2 through a top-32 teacher cache. WikiText-2 offline: train on `validation[:90%]`, test "
        f"on the first {args.test_blocks} blocks of `test`; bits per byte (lower is better) count every predicted token's NLL "
        "over the UTF-8 bytes it spells, so students with different tokenizers compare. Pruning loss recovered = "
        "(untrained − trained) / (untrained − teacher).",
    ]
    result.update(tables=tables, notes=notes, data={"runs": results, "run_key": run_key(args), "teachers": teachers,
                                                    "timing": None if timed is None else timed.seconds, "harness": harnessed})
    return result


def main() -> None:
    args = parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    teacher = SmolLM2()
    pairs = sorted({STUDENTS[ROWS[r][0]][0] for r in args.rows})
    if "bpe" in pairs:
        from lkd.hub import load_hub_dataset

        train_bpe_if_missing(common.ROOT / BPE, 8192, lambda: (
            t for t in load_hub_dataset("Salesforce/wikitext", "wikitext-2-raw-v1", split=DATA["train_split"])["text"] if t))
    teachers = {"params": count_parameters(teacher.model)}
    for pair in pairs:
        if not args.skip_missing:
            ensure_cache(pair, teacher, args)
        teachers[pair] = teacher_test(pair, teacher, args)
        print(f"teacher test bpb ({pair} blocks): {teachers[pair]['bpb']:.4f}", flush=True)
    students = Students(teacher)
    results = common.seed_major_runs("pretrained_students", args.workdir, run_key(args), args.seeds, args.rows,
                                     lambda row, seed: run(row, seed, students, args), skip_missing=args.skip_missing)
    kept_speed = args.workdir / "speed.json"  # measured once, reused by later invocations (a report of kept runs)
    timed = None
    if kept_speed.is_file():
        timed = common.PairedTiming(json.loads(kept_speed.read_text()), baseline="teacher")
    elif args.repeats > 0 and not args.skip_missing:
        timed = speed(students, args)
        kept_speed.write_text(json.dumps(timed.seconds))
    harnessed = harness(teacher, args)
    common.finish(section(results, teachers, timed, harnessed, args), "pretrained_students", args)


if __name__ == "__main__":
    main()
