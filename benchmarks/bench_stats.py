"""Time bootstrap_ci and paired_tests on a synthetic per-query frame of the default study's size.

XQuAD-R: 1190 query ids x 11 languages (11 mono + 110 cross pairs + 11 multilingual query
languages) x 4 strategies x 3 seeds x 5 metrics. Run by hand: python benchmarks/bench_stats.py
"""
import sys
import time

import numpy as np
import pandas as pd

from hybridlib.stats import bootstrap_ci, paired_tests

LANGS = ["ar", "de", "el", "en", "es", "hi", "ru", "th", "tr", "vi", "zh"]
STRATEGIES = ["zero-shot", "x-x-mono", "x-y", "hybrid"]
METRICS = ["mAP", "R@1", "R@10", "nDCG@10", "rank_distance"]


def synthetic(n_ids=1190, seeds=(0, 1, 2)):
    rng = np.random.default_rng(0)
    cells = [("monolingual", l, l) for l in LANGS] + \
            [("crosslingual", q, p) for q in LANGS for p in LANGS if q != p] + \
            [("multilingual", l, "all") for l in LANGS]
    cells = pd.DataFrame(cells, columns=["setting", "query_lang", "pool_lang"])
    base = cells.loc[cells.index.repeat(n_ids)].reset_index(drop=True)
    base["query_id"] = np.tile(np.arange(n_ids), len(cells))
    frames = []
    for s, strategy in enumerate(STRATEGIES):
        for seed in seeds:
            for metric in METRICS:
                f = base.copy()
                f["model"], f["strategy"], f["seed"], f["eval_dataset"], f["metric"] = \
                    "default", strategy, seed, "xquad-r", metric
                f["value"] = rng.random(len(f)) + 0.01 * s
                frames.append(f)
    frame = pd.concat(frames, ignore_index=True)
    for c in ["model", "strategy", "eval_dataset", "setting", "query_lang", "pool_lang", "metric"]:
        frame[c] = frame[c].astype(str)  # object columns, as read back from CSV/parquet
    return frame


if __name__ == "__main__":
    B = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    t = time.perf_counter()
    frame = synthetic()
    print(f"synthetic frame: {len(frame):,} rows, built in {time.perf_counter() - t:.1f} s")
    rows = []
    for name, fn in (("bootstrap_ci", lambda: bootstrap_ci(frame, bootstrap_samples=B)),
                     ("paired_tests", lambda: paired_tests(frame, bootstrap_samples=B))):
        t = time.perf_counter()
        out = fn()
        rows.append((name, B, len(out), time.perf_counter() - t))
    print(pd.DataFrame(rows, columns=["function", "B", "output rows", "seconds"]).to_string(index=False))
