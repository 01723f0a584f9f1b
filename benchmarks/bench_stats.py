"""Time bootstrap_ci and paired_tests on a synthetic per-query frame of the default study's size.

Default study (params/default.yaml, issue 14): the first 400 XQuAD-R ids in 76 paragraphs x 11
languages (11 mono + 110 cross cells + 11 multilingual query languages = 133 cells), mAP in
every cell and the rank distance in the multilingual ones, 4 strategies (zero-shot: one run;
the three trained strategies: 5 runs each), paragraphs as clusters. ``--ids 1190 --clusters 240``
gives the full XQuAD-R. Run by hand: python benchmarks/bench_stats.py [B] [--ids N] [--runs R]
"""
import argparse
import time

import numpy as np
import pandas as pd

from hybridlib.stats import bootstrap_ci, paired_tests

LANGS = ["ar", "de", "el", "en", "es", "hi", "ru", "th", "tr", "vi", "zh"]
STRATEGIES = ["zero-shot", "x-x-mono", "x-y", "hybrid"]


def synthetic(n_ids: int, n_runs: int) -> pd.DataFrame:
    """Per-query rows of every strategy, run, cell and metric (uniform values, shifted per strategy)."""
    rng = np.random.default_rng(0)
    cells = [("monolingual", l, l, "mAP") for l in LANGS] + \
            [("crosslingual", q, p, "mAP") for q in LANGS for p in LANGS if q != p] + \
            [("multilingual", l, "all", m) for l in LANGS for m in ("mAP", "rank_distance")]
    cells = pd.DataFrame(cells, columns=["setting", "query_lang", "pool_lang", "metric"])
    base = cells.loc[cells.index.repeat(n_ids)].reset_index(drop=True)
    base["query_id"] = np.tile([f"q{i:05d}" for i in range(n_ids)], len(cells))
    frames = []
    for s, strategy in enumerate(STRATEGIES):
        for seed in range(1 if strategy == "zero-shot" else n_runs):
            f = base.assign(model="default", strategy=strategy, seed=seed, eval_dataset="xquad-r")
            f["value"] = rng.random(len(f)) + 0.01 * s
            frames.append(f)
    frame = pd.concat(frames, ignore_index=True)
    for c in ["model", "strategy", "eval_dataset", "setting", "query_lang", "pool_lang", "metric", "query_id"]:
        frame[c] = frame[c].astype(str)  # object columns, as read back from CSV/parquet
    return frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("B", type=int, nargs="?", default=1000, help="bootstrap replicates")
    parser.add_argument("--ids", type=int, default=400, help="question ids")
    parser.add_argument("--clusters", type=int, default=76, help="paragraphs the ids fall into")
    parser.add_argument("--runs", type=int, default=5, help="runs (seeds) per trained strategy")
    args = parser.parse_args()
    t = time.perf_counter()
    frame = synthetic(args.ids, args.runs)
    clusters = pd.Series({f"q{i:05d}": f"p{i * args.clusters // args.ids}" for i in range(args.ids)},
                         name="paragraph")
    print(f"synthetic frame: {len(frame):,} rows, {args.ids} ids in {args.clusters} clusters, "
          f"{args.runs} runs per trained strategy, built in {time.perf_counter() - t:.1f} s")
    rows = []
    for name, fn in (("bootstrap_ci", lambda: bootstrap_ci(frame, clusters=clusters, bootstrap_samples=args.B)),
                     ("paired_tests", lambda: paired_tests(frame, clusters=clusters, bootstrap_samples=args.B))):
        t = time.perf_counter()
        out = fn()
        rows.append((name, args.B, len(out), time.perf_counter() - t))
    print(pd.DataFrame(rows, columns=["function", "B", "output rows", "seconds"]).to_string(index=False))


if __name__ == "__main__":
    main()
