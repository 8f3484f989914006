"""DKVB key lookup: the library's quantiser (``VectorQuantize``, what training uses) against lkd's batched
nearest-key search (``lkd.models.dkvb.nearest_keys``, what eval / predict / frozen keys use), same keys.

    OMP_NUM_THREADS=2 python benchmarks/dkvb_lookup.py        # benchmarks/results/dkvb_lookup.json, "DKVB lookup"

The MNIST DKVB student's size (64 codebooks × 512 keys of dim 16 over 784 pixels); keys moved by EMA over
random inputs first (not the initial ones). Each batch size: the two lookups take turns, one warm-up each,
median of ``--repeats`` rounds; the whole forward (projection, lookup, values, decoder) is timed too.
Indices are compared on every batch: the speed-up counts only if they are equal.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402

import torch  # noqa: E402
from einops import rearrange  # noqa: E402

from benchmarks.report import RATIO, column, table  # noqa: E402
from lkd.models import DiscreteKeyValueBottleneck  # noqa: E402
from lkd.models.dkvb import nearest_keys  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 100, 1000, 10000])
    p.add_argument("--repeats", type=int, default=7)
    common.add_output_options(p)
    return p.parse_args(argv)


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv=None) -> None:
    args = parse_args(argv)
    common.threads_from_env()
    torch.manual_seed(0)
    m = DiscreteKeyValueBottleneck(in_features=784, num_codebooks=64, num_keys=512, key_dim=16)
    with torch.no_grad():
        m.train()(torch.rand(4096, 784))  # EMA: trained keys
        m.values.normal_()
    m.eval()
    keys = m.keys.float()
    rows = []
    for batch in args.batches:
        x = torch.rand(batch, 784)
        with torch.inference_mode():
            q = m.project(x)
            flat = rearrange(q, "b c d -> b (c d)")
            library = lambda: m.vq(flat)[1]  # noqa: E731
            fast = lambda: nearest_keys(q, keys)  # noqa: E731
            equal = torch.equal(rearrange(library(), "b ... -> b (...)"), fast())
            lib_s, fast_s = [], []
            for _ in range(args.repeats):  # interleaved
                lib_s.append(median_seconds(library, 1))
                fast_s.append(median_seconds(fast, 1))

            def forward_library():
                indices = rearrange(m.vq(rearrange(m.project(x), "b c d -> b (c d)"))[1], "b ... -> b (...)")
                return m.values[torch.arange(64)[None], indices].mean(1)

            fwd_lib = median_seconds(forward_library, args.repeats)
            fwd_fast = median_seconds(lambda: m(x), args.repeats)
            torch.testing.assert_close(forward_library(), m(x), rtol=0, atol=1e-6)  # same keys; float order of the mean
        lib, fst = statistics.median(lib_s), statistics.median(fast_s)
        rows.append({"batch": batch, "library_ms": 1000 * lib, "fast_ms": 1000 * fst, "speedup": lib / fst, "equal": "yes" if equal else "NO",
                     "fwd_library_ms": 1000 * fwd_lib, "fwd_fast_ms": 1000 * fwd_fast, "fwd_speedup": fwd_lib / fwd_fast})
        print(rows[-1], flush=True)
    result = common.new_result("DKVB lookup", args, threads=True)
    result["intro"] = [
        "The MNIST DKVB student's bottleneck (784 pixels → fixed random projection → 64 codebooks × 512 keys of dim 16, "
        "mean decoder), keys moved by EMA first. `VectorQuantize` is the library's quantiser (training, EMA); the fast "
        "path is `nearest_keys`: one `baddbmm` of the queries against all codebooks with the keys' squared norms, "
        "argmin, one gather of the values (eval, predict, frozen keys, ONNX). Median of "
        f"{args.repeats} interleaved rounds per batch size; `same keys` compares the indices of the two on that batch."]
    cols = [column("batch", "batch"), column("lookup, VectorQuantize (ms)", "library_ms", format="{:.2f}"),
            column("lookup, nearest_keys (ms)", "fast_ms", format="{:.2f}"), column("speed-up", "speedup", format=RATIO),
            column("same keys", "equal"), column("forward, library (ms)", "fwd_library_ms", format="{:.2f}"),
            column("forward, fast (ms)", "fwd_fast_ms", format="{:.2f}"), column("forward speed-up", "fwd_speedup", format=RATIO)]
    result["tables"] = [table(cols, rows)]
    at = next((r for r in rows if r["batch"] == 1000), None)
    if at:
        result["notes"] = [f"Target (lookup ≥ 5× faster than today's path at batch 1,000, equal outputs): {at['speedup']:.2f}× "
                           f"({'equal' if at['equal'] == 'yes' else 'NOT equal'}) — **{'met' if at['speedup'] >= 5 and at['equal'] == 'yes' else 'not met'}**."]
    common.finish(result, "dkvb_lookup", args)


if __name__ == "__main__":
    main()
