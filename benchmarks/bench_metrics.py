"""Time of every XQuAD-R setting's metrics from embeddings: hybridlib vs a per-query sklearn loop.

    python benchmarks/bench_metrics.py            # random 384-d embeddings (as fast as real ones)
    python benchmarks/bench_metrics.py --real     # the default encoder's embeddings (from the
                                                  # embedding cache; encodes first if not cached)
    python benchmarks/bench_metrics.py --multi-sample 2000   # quicker: sample the sklearn loop

hybridlib: one matrix product per query language, ranks by comparison within a pool and by
sorting among all candidates, the own language's share of the top 10 from the same sort
(hybridlib.evaluate, hybridlib.metrics.ranks_per_pool).
Baseline: for each query and pool, scores = pool @ query and sklearn's average_precision_score
(mAP only). The multilingual setting is timed in full; the 121 monolingual + cross-lingual
settings (144k query-pool pairs) from a random sample of ``--sample`` pairs, scaled up.
Both sides run in this process, one after the other; the ratio is what to compare.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.metrics import average_precision_score

from hybridlib.constants import MULTI
from hybridlib.data import load_lareqa
from hybridlib.evaluate import PoolEmbeddings, aggregate, evaluate_lareqa, lareqa_per_query, lareqa_ranks


def random_embeddings(data, dim=384, seed=0) -> PoolEmbeddings:
    rng = np.random.default_rng(seed)

    def unit(n):
        x = rng.standard_normal((n, dim)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    return PoolEmbeddings(unit(len(data.questions)), unit(len(data.candidates)))


def real_embeddings(data) -> PoolEmbeddings:
    from hybridlib.evaluate import encode_pools
    from hybridlib.models import DualEncoder

    return encode_pools(DualEncoder("default"), data)


def best_of(repeats, function):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return min(times), result


class SklearnLoop:
    """AP of one query in one pool, the plain way: pool @ query, then sklearn (lookups precomputed)."""

    def __init__(self, data, emb):
        q = data.questions
        self.emb, self.ids, self.langs = emb, q["id"].to_numpy(), q["lang"].to_numpy()
        self.answers = {}
        for qid, lang, cand in zip(self.ids, self.langs, q["candidate"]):
            self.answers.setdefault(qid, {})[lang] = cand
        cand_lang = data.candidates["lang"].to_numpy()
        self.members = {lang: np.flatnonzero(cand_lang == lang) for lang in data.languages}
        self.members[None] = np.arange(len(cand_lang))

    def ap(self, query_row, pool_lang=None):
        answers = self.answers[self.ids[query_row]]
        relevant = list(answers.values()) if pool_lang is None else [answers[pool_lang]]
        members = self.members[pool_lang]
        scores = self.emb.candidates[members] @ self.emb.queries[query_row]
        return average_precision_score(np.isin(members, relevant), scores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", action="store_true", help="use the default encoder's (cached) embeddings")
    parser.add_argument("--sample", type=int, default=3000, help="query-pool pairs timed for mono/cross")
    parser.add_argument("--multi-sample", type=int, default=None,
                        help="time the sklearn loop on this many multilingual queries, scaled (default: all)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    data = load_lareqa("xquad-r")
    emb = real_embeddings(data) if args.real else random_embeddings(data)
    print(f"XQuAD-R: {len(data.questions)} queries, {len(data.candidates)} candidates, "
          f"{'default encoder' if args.real else 'random'} embeddings of width {emb.queries.shape[1]}")

    blocks = [torch.from_numpy(emb.queries[(data.questions["lang"] == lang).to_numpy()]) for lang in data.languages]
    buffer = torch.empty(max(len(b) for b in blocks), len(emb.candidates))
    candidates = torch.from_numpy(emb.candidates)
    t_matmul, _ = best_of(args.repeats, lambda: [torch.mm(b, candidates.T, out=buffer[:len(b)]) for b in blocks])
    t_ranks, ranked = best_of(args.repeats, lambda: list(lareqa_ranks(emb, data)))
    t_per_query, per_query = best_of(args.repeats, lambda: lareqa_per_query(emb, data))
    t_total, (metrics, queries) = best_of(args.repeats, lambda: evaluate_lareqa(emb, data, model="m", per_query=True))
    t_aggregate, _ = best_of(args.repeats, lambda: aggregate(queries))
    n_settings = len({(r.setting, r.query_lang, r.pool_lang) for r in ranked})

    loop = SklearnLoop(data, emb)
    multi_rows = np.arange(len(data.questions))
    if args.multi_sample:
        multi_rows = np.sort(np.random.default_rng(1).choice(multi_rows, args.multi_sample, replace=False))
    start = time.perf_counter()
    multi_ap = np.array([loop.ap(row) for row in multi_rows])
    t_sk_multi = (time.perf_counter() - start) * len(data.questions) / len(multi_rows)

    rng = np.random.default_rng(0)
    langs = data.languages
    rows = rng.integers(len(data.questions), size=args.sample)
    pairs = [(int(row), langs[rng.integers(len(langs))]) for row in rows]  # XQuAD-R: every id in every language
    start = time.perf_counter()
    sample_ap = [loop.ap(row, lang) for row, lang in pairs]
    t_sk_sample = time.perf_counter() - start
    t_sk_mono_cross = t_sk_sample / args.sample * len(data.questions) * len(langs)

    # the two implementations agree (mAP), checked on what was timed
    ours = queries[(queries["metric"] == "mAP")].set_index(["setting", "query_lang", "pool_lang", "query_id"])["value"]
    q = data.questions
    ours_multi = ours.xs(MULTI, level="setting").droplevel("pool_lang")
    keys = list(zip(q["lang"].to_numpy()[multi_rows], q["id"].to_numpy()[multi_rows]))
    diff_multi = np.abs(ours_multi.loc[keys].to_numpy() - multi_ap).max()
    diff_sample = max(abs(ours[("monolingual" if q["lang"].iat[r] == l else "crosslingual",
                                q["lang"].iat[r], l, q["id"].iat[r])] - ap)
                      for (r, l), ap in zip(pairs, sample_ap))

    print(f"\n{n_settings} language pairs (121 mono + cross, 11 multilingual query languages; the macro rows "
          f"are averages); hybridlib best of {args.repeats}, sklearn loop once\n")
    rows = [
        ("ranks of relevant candidates, top-10 languages (matmul + sort)", t_ranks, None),
        ("  of which the matrix products (one per query language)", t_matmul, None),
        ("per-query metrics (ranks + mAP, R@k, Hit@k, nDCG@10, language bias)", t_per_query, None),
        ("aggregate to the tidy table", t_aggregate, None),
        ("evaluate_lareqa, all settings, from embeddings", t_total, t_sk_multi + t_sk_mono_cross),
        (f"  of which multilingual (sklearn: {len(multi_rows)} queries"
         f"{', scaled' if args.multi_sample else ''})", None, t_sk_multi),
        (f"  of which mono + cross (sklearn: {args.sample} pairs, scaled)", None, t_sk_mono_cross),
    ]
    print(f"{'step':<70} {'hybridlib s':>12} {'sklearn loop s':>15} {'ratio':>8}")
    for name, ours_s, sk_s in rows:
        ours_txt = f"{ours_s:12.2f}" if ours_s is not None else f"{'':>12}"
        sk_txt = f"{sk_s:15.1f}" if sk_s is not None else f"{'':>15}"
        ratio = f"{sk_s / ours_s:7.0f}x" if ours_s and sk_s else ""
        print(f"{name:<70} {ours_txt} {sk_txt} {ratio:>8}")
    print(f"\nmax |AP difference| hybridlib vs sklearn: multilingual {diff_multi:.2e}, sampled pairs {diff_sample:.2e}")
    print("(with real embeddings a query's AP can differ by ~1e-3 where a relevant and another candidate score\n"
          " within one float32 ulp: the two matrix products round differently and the tie flips)")
    macro = metrics[(metrics["query_lang"] == "all") & (metrics["metric"] == "mAP")].set_index("setting")["value"]
    print("macro mAP mono / cross / multi: " + " / ".join(f"{macro[s]:.4f}" for s in
                                                         ("monolingual", "crosslingual", "multilingual")))


if __name__ == "__main__":
    main()
