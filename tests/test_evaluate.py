"""LAReQA / BEIR evaluation: settings, relevant sets, averages, cache.

Per-query values are checked against an independent brute-force evaluator written here
(sklearn's average_precision_score per query and pool, an explicit sort for R@k / Hit@k /
nDCG / rank distance, each candidate's chance to be in the top 10 for the own-language
share), on real XQuAD-R / MLQA-R subsets with integer embeddings (exact, tied scores). BEIR
metrics are checked against pytrec_eval. The ``hybridlib evaluate`` command: tests/test_cli.py.
"""
import hashlib
import json

import numpy as np
import pandas as pd
import pytest
import pytrec_eval
from sklearn.metrics import average_precision_score

from hybridlib.constants import ALL, CROSS, METRIC_COLUMNS, MONO, MULTI, PER_QUERY_COLUMNS
from hybridlib.data import LaReQA, load_lareqa
from hybridlib.errors import HybridlibError
from hybridlib.evaluate import (
    EvaluationError,
    PoolEmbeddings,
    aggregate,
    encode_pools,
    evaluate_beir,
    evaluate_lareqa,
    load_beir,
    model_fingerprint,
    summarize,
)
from hybridlib.io import write_table


def random_embeddings(data, dim=8, seed=0, integer=False):
    rng = np.random.default_rng(seed)
    if integer:  # small integers: exact dot products, many tied scores
        draw = lambda n: rng.integers(-2, 3, size=(n, dim)).astype(np.float32)  # noqa: E731
    else:
        draw = lambda n: rng.standard_normal((n, dim)).astype(np.float32)  # noqa: E731
    return PoolEmbeddings(draw(len(data.questions)), draw(len(data.candidates)))


class HashEncoder:
    """Deterministic pseudo-random embeddings per (kind, text); records what it encodes."""

    def __init__(self, dim=16, fingerprint="hash-v1"):
        self.name, self.dim, self.fingerprint = "hash-encoder", dim, fingerprint
        self.prefixes = {"query": "q: ", "passage": "p: "}
        self.encoded = []

    def encode(self, texts, kind):
        self.encoded.append((kind, list(texts)))
        seeds = [int.from_bytes(hashlib.sha256(f"{kind}|{t}".encode()).digest()[:8], "little") for t in texts]
        return np.array([np.random.default_rng(s).standard_normal(self.dim) for s in seeds],
                        dtype=np.float32).reshape(len(texts), self.dim)


# ---------------------------------------------------------------- independent evaluator

def brute_force(data, queries, candidates):
    """Per-query metrics of every setting, one pool and one query at a time."""
    q, c = data.questions, data.candidates
    answer = {(i, l): a for i, l, a in zip(q["id"], q["lang"], q["candidate"])}
    langs = sorted(set(q["lang"]))
    rows = []
    for row, (lang, qid) in enumerate(zip(q["lang"], q["id"])):
        for pool in langs + [ALL]:
            members = np.flatnonzero((c["lang"] == pool).to_numpy() | (pool == ALL))
            relevant = {answer[qid, l] for l in langs if (qid, l) in answer and pool in (l, ALL)}
            if not relevant:
                continue  # no parallel answer in this pool: the query is left out
            scores = candidates[members] @ queries[row]
            truth = np.isin(members, list(relevant))
            order = np.lexsort((truth, -scores))  # score descending, non-relevant first in a tie
            positions = np.flatnonzero(truth[order]) + 1
            gains = (1 / np.log2(positions[positions <= 10] + 1)).sum()
            ideal = (1 / np.log2(np.arange(1, min(len(relevant), 10) + 1) + 1)).sum()
            setting = MULTI if pool == ALL else MONO if pool == lang else CROSS
            values = {"mAP": average_precision_score(truth, scores), "R@1": np.mean(positions <= 1) * 1.0,
                      "R@10": np.mean(positions <= 10) * 1.0, "nDCG@10": gains / ideal}
            if setting == MULTI:
                distance = float(positions.max() - positions.min())
                values.update({"Hit@1": float(positions.min() <= 1), "Hit@10": float(positions.min() <= 10),
                               "rank_distance": distance, "rank_distance_fraction": distance / len(members),
                               "own_lang@10": own_share(scores, (c["lang"] == lang).to_numpy(), 10)})
            rows += [(setting, lang, pool, qid, m, v) for m, v in values.items()]
    return pd.DataFrame(rows, columns=["setting", "query_lang", "pool_lang", "query_id", "metric", "value"])


def own_share(scores, own, k):
    """Expected share of the ``own`` candidates in the top k when tied scores are ordered at
    random: each candidate is in the top k with probability (k - #above) / #tied, clipped to [0, 1]."""
    k = min(k, len(scores))
    above = (scores[None, :] > scores[:, None]).sum(axis=1)
    tied = (scores[None, :] == scores[:, None]).sum(axis=1)
    return float(np.clip((k - above) / tied, 0, 1)[own].sum() / k)


def as_index(frame):
    keys = ["setting", "query_lang", "pool_lang", "query_id", "metric"]
    return frame.astype({k: str for k in keys}).set_index(keys)["value"].sort_index()


@pytest.mark.parametrize("dataset, max_ids", [("xquad-r", 8), ("mlqa-r", 30)])
def test_per_query_values_match_brute_force_with_ties(dataset, max_ids):
    data = load_lareqa(dataset, max_ids=max_ids)
    embeddings = random_embeddings(data, dim=5, integer=True)
    _, per_query = evaluate_lareqa(embeddings, data, model="m", per_query=True)
    ours, expected = as_index(per_query), as_index(brute_force(data, embeddings.queries, embeddings.candidates))
    assert ours.index.equals(expected.index)
    np.testing.assert_allclose(ours.to_numpy(), expected.to_numpy(), rtol=0, atol=1e-12)


# ---------------------------------------------------------------- settings and relevant sets

@pytest.mark.parametrize("dataset, n_lang, n_mono, n_cross", [("xquad-r", 11, 11, 110), ("mlqa-r", 7, 7, 42)])
def test_settings_on_full_data(dataset, n_lang, n_mono, n_cross):
    data = load_lareqa(dataset)
    metrics, per_query = evaluate_lareqa(random_embeddings(data), data, model="random", per_query=True)
    assert list(metrics.columns) == list(METRIC_COLUMNS) and list(per_query.columns) == list(PER_QUERY_COLUMNS)
    pairs = metrics[metrics["query_lang"] != ALL].drop_duplicates(["setting", "query_lang", "pool_lang"])
    assert pairs["setting"].value_counts().to_dict() == {CROSS: n_cross, MONO: n_mono, MULTI: n_lang}
    assert (pairs.loc[pairs["setting"] == MULTI, "pool_lang"] == ALL).all()
    macro = metrics[(metrics["query_lang"] == ALL) & (metrics["pool_lang"] == ALL)]
    multilingual_only = ("Hit@1", "Hit@10", "rank_distance", "rank_distance_fraction", "own_lang@10")
    assert set(zip(macro["setting"], macro["metric"])) == (
        {(s, m) for s in (MONO, CROSS, MULTI) for m in ("mAP", "R@1", "R@10", "nDCG@10")}
        | {(MULTI, m) for m in multilingual_only})
    # every query is evaluated monolingually and multilingually exactly once per metric
    counts = per_query[per_query["metric"] == "mAP"].groupby("setting", observed=True).size()
    assert counts[MONO] == counts[MULTI] == len(data.questions)


def test_mlqa_r_queries_without_a_parallel_answer_are_left_out():
    data = load_lareqa("mlqa-r")
    _, per_query = evaluate_lareqa(random_embeddings(data), data, model="random", per_query=True)
    cross = per_query[(per_query["setting"] == CROSS) & (per_query["metric"] == "mAP")]
    got = cross.groupby(["query_lang", "pool_lang"], observed=True).size()
    langs_of = data.questions.groupby("id")["lang"].agg(set)
    expected = {(x, y): sum(y in langs_of[i] for i in data.questions.loc[data.questions["lang"] == x, "id"])
                for x in data.languages for y in data.languages if x != y}
    assert got.to_dict() == {pair: n for pair, n in expected.items() if n}
    assert got.sum() < len(data.questions) * (len(data.languages) - 1)  # some are really left out


def tiny_lareqa():
    """Languages a, b, c; id 1 exists in a and b, id 2 in b and c: a->c and c->a have no queries."""
    questions = pd.DataFrame([("a", "1", "qa1", 0), ("b", "1", "qb1", 2), ("b", "2", "qb2", 3), ("c", "2", "qc2", 4)],
                             columns=["lang", "id", "text", "candidate"])
    candidates = pd.DataFrame([(l, f"s{i}", f"{l}/0", "ctx") for i, l in enumerate("aabbcc")],
                              columns=["lang", "text", "paragraph", "context"])
    return LaReQA("tiny", questions, candidates)


def test_settings_without_queries_are_left_out():
    data = tiny_lareqa()
    metrics = evaluate_lareqa(random_embeddings(data), data, model="m")
    pairs = set(zip(metrics["setting"], metrics["query_lang"], metrics["pool_lang"]))
    assert {p[1:] for p in pairs if p[0] == CROSS} == {("a", "b"), ("b", "a"), ("b", "c"), ("c", "b"), (ALL, ALL)}
    assert {p[1:] for p in pairs if p[0] == MONO} == {("a", "a"), ("b", "b"), ("c", "c"), (ALL, ALL)}


def test_hand_made_example():
    """One id in en and de; 1-d embeddings, so the scores are the candidates' values."""
    questions = pd.DataFrame([("de", "q", "frage", 4), ("en", "q", "question", 0)],
                             columns=["lang", "id", "text", "candidate"])
    candidates = pd.DataFrame([("en", "e0", "p", ""), ("en", "e1", "p", ""), ("en", "e2", "p", ""),
                               ("de", "d0", "p", ""), ("de", "d1", "p", ""), ("de", "d2", "p", "")],
                              columns=["lang", "text", "paragraph", "context"])
    values = np.array([[0.8], [0.3], [0.9], [0.1], [0.5], [0.95]], dtype=np.float32)
    metrics = evaluate_lareqa((np.ones((2, 1), np.float32), values), LaReQA("hand", questions, candidates), model="m")
    value = metrics.set_index(["setting", "query_lang", "pool_lang", "metric"])["value"]
    # en pool 0.9 > [0.8] > 0.3 and de pool 0.95 > [0.5] > 0.1: every answer at rank 2
    for setting, x, y in [(MONO, "en", "en"), (MONO, "de", "de"), (CROSS, "en", "de"), (CROSS, "de", "en")]:
        assert value[setting, x, y, "mAP"] == pytest.approx(0.5) and value[setting, x, y, "R@1"] == 0
        assert value[setting, x, y, "nDCG@10"] == pytest.approx(1 / np.log2(3))
    # multilingual pool: d2 .95, e2 .9, [e0 .8], [d1 .5], e1 .3, d0 .1 -> positions 3 and 4
    assert value[MULTI, "en", ALL, "mAP"] == pytest.approx((1 / 3 + 2 / 4) / 2)
    assert value[MULTI, "en", ALL, "rank_distance"] == 1
    assert value[MULTI, "en", ALL, "rank_distance_fraction"] == pytest.approx(1 / 6)  # of the 6 candidates
    assert value[MULTI, "en", ALL, "R@1"] == 0 and value[MULTI, "en", ALL, "Hit@10"] == 1
    # top 3 of the 6 (k = 10 > pool: the whole pool): own-language share 3/6 for both languages
    assert value[MULTI, "en", ALL, "own_lang@10"] == pytest.approx(0.5)
    assert value[MULTI, "en", ALL, "nDCG@10"] == pytest.approx((1 / 2 + 1 / np.log2(5)) / (1 + 1 / np.log2(3)))
    assert value[MULTI, ALL, ALL, "R@10"] == 1


def test_averages_are_per_setting_then_macro():
    data = load_lareqa("mlqa-r", max_ids=60)
    metrics, per_query = evaluate_lareqa(random_embeddings(data), data, model="m", per_query=True)
    per_query = per_query.astype({"setting": str, "query_lang": str, "pool_lang": str, "metric": str})
    value = metrics.set_index(["setting", "query_lang", "pool_lang", "metric"])["value"]
    pair_means = per_query.groupby(["setting", "query_lang", "pool_lang", "metric"])["value"].mean()
    for key, mean in pair_means.items():
        assert value[key] == pytest.approx(mean)
    for setting in (MONO, CROSS, MULTI):
        assert value[setting, ALL, ALL, "mAP"] == pytest.approx(pair_means[setting].xs("mAP", level="metric").mean())
    # queries are not pooled across settings: the macro average differs from the query mean
    assert value[CROSS, ALL, ALL, "mAP"] != pytest.approx(
        per_query.query("setting == @CROSS and metric == 'mAP'")["value"].mean(), abs=1e-9)
    table = summarize(metrics)
    assert table.loc[("m", "zero-shot", 0, "mlqa-r"), "cross mAP"] == pytest.approx(value[CROSS, ALL, ALL, "mAP"])
    row = table.loc[("m", "zero-shot", 0, "mlqa-r")]
    assert row["rank distance"] == value[MULTI, ALL, ALL, "rank_distance"]
    assert row["rank distance fraction"] == value[MULTI, ALL, ALL, "rank_distance_fraction"]
    assert row["own lang@10"] == value[MULTI, ALL, ALL, "own_lang@10"]
    assert row["multi Hit@10"] >= row["multi R@10"]  # a hit needs one of the 2-4 answers, R@10 their share


def test_bad_embeddings_are_clear_errors():
    data = tiny_lareqa()
    with pytest.raises(EvaluationError, match="do not fit tiny"):
        evaluate_lareqa((np.zeros((3, 4)), np.zeros((6, 4))), data, model="m")
    with pytest.raises(HybridlibError, match="same width"):
        evaluate_lareqa((np.zeros((4, 4)), np.zeros((6, 5))), data, model="m")
    with pytest.raises(EvaluationError, match="model="):
        evaluate_lareqa((np.zeros((4, 4)), np.zeros((6, 4))), data)


# ---------------------------------------------------------------- encoding and cache

def test_pools_are_encoded_once_and_cached(tmp_path):
    data = load_lareqa("xquad-r", ["en", "de"], max_ids=5)
    data = LaReQA(data.name, data.questions, pd.concat([data.candidates, data.candidates.iloc[:3]], ignore_index=True))
    encoder = HashEncoder()
    first = encode_pools(encoder, data, cache=tmp_path)
    assert [kind for kind, _ in encoder.encoded] == ["query", "passage"]
    assert len(encoder.encoded[1][1]) == len(data.candidates) - 3  # duplicate texts encoded once
    np.testing.assert_array_equal(first.candidates[-3:], first.candidates[:3])
    np.testing.assert_array_equal(first.queries, encoder.encode(data.questions["text"].tolist(), "query"))
    encoder.encoded.clear()
    second = encode_pools(encoder, data, cache=tmp_path)
    assert encoder.encoded == []  # both text sets came from the cache
    np.testing.assert_array_equal(first.candidates, second.candidates)
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".npy", ".npy"]  # no temp files left
    encoder.prefixes = {"query": "query: ", "passage": "p: "}
    encode_pools(encoder, data, cache=tmp_path)
    assert [kind for kind, _ in encoder.encoded] == ["query"]  # a new prefix is a new key
    encode_pools(encoder, data, cache=tmp_path, candidate_context=True)
    assert encoder.encoded[-1][1][0] == data.candidates["text"][0] + " " + data.candidates["context"][0]


def test_fingerprint_follows_the_weights_not_the_name(tiny_encoder):
    import torch

    before = model_fingerprint(tiny_encoder)
    assert before == model_fingerprint(tiny_encoder)
    with torch.no_grad():
        next(tiny_encoder.model.parameters())[0, 0] += 1e-3
    assert model_fingerprint(tiny_encoder) != before
    assert model_fingerprint(object()) is None  # nothing to identify: never cached


class _NoEncoding:
    """An encoder's identity without its encode: proves that embeddings come from the cache."""

    def __init__(self, encoder):
        self.__dict__.update(vars(encoder))

    def encode(self, texts, kind):
        raise AssertionError("expected a cache hit")


class _OnGrid:
    """An encoder's embeddings rounded to multiples of 2^-10, so that every float32 dot product is exact.

    Products of two grid values are multiples of 2^-20; for (nearly) unit vectors every partial
    sum is at most ~1.1 in magnitude, i.e. < 2^24 multiples of 2^-20: exactly representable in
    float32 whatever the summation order. The evaluation's torch product and the brute force's
    numpy product then give identical scores, ties included, and must agree exactly.
    """

    def __init__(self, encoder):
        self.encoder, self.name = encoder, encoder.name
        self.fingerprint = f"grid-2^-10-{model_fingerprint(encoder)}"

    def encode(self, texts, kind):
        return np.round(np.asarray(self.encoder.encode(texts, kind=kind)) * 1024) / 1024


@pytest.mark.slow
def test_default_encoder_end_to_end(default_encoder_memo, tmp_path):
    # the texts of tests/test_search.py's ranking test (11 languages, 132 questions): encoded once
    data = load_lareqa("xquad-r", max_ids=12)
    encoder = _OnGrid(default_encoder_memo)
    metrics, per_query = evaluate_lareqa(encoder, data, model="e5", strategy="zero-shot", seed=0,
                                         per_query=True, cache=tmp_path, progress=False)
    # the same embeddings, from the cache (their alignment with the texts is tested with HashEncoder)
    embeddings = encode_pools(_NoEncoding(encoder), data, cache=tmp_path)
    assert np.all(np.abs(np.linalg.norm(embeddings.candidates, axis=1) - 1) < 0.05)  # the grid bound's premise
    expected = brute_force(data, embeddings.queries, embeddings.candidates)
    ours, expected = as_index(per_query), as_index(expected)
    assert ours.index.equals(expected.index)
    np.testing.assert_allclose(ours.to_numpy(), expected.to_numpy(), rtol=0, atol=1e-12)
    value = metrics.set_index(["setting", "query_lang", "pool_lang", "metric"])["value"]
    assert value[MONO, ALL, ALL, "mAP"] > 0.5  # a real retriever: a random order of ~10 candidates gives ~0.3


def test_per_query_table_round_trips_through_parquet_and_csv(tmp_path):
    data = tiny_lareqa()
    metrics, per_query = evaluate_lareqa(random_embeddings(data), data, model="m", seed=3, per_query=True)
    assert all(isinstance(per_query[c].dtype, pd.CategoricalDtype) for c in ("setting", "query_id", "metric"))
    back = pd.read_parquet(write_table(per_query, tmp_path / "q.parquet"))
    pd.testing.assert_frame_equal(back, per_query)
    back = pd.read_csv(write_table(metrics, tmp_path / "m.csv.gz"))
    pd.testing.assert_frame_equal(back, metrics, check_dtype=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.csv.gz", "q.parquet"]


# ---------------------------------------------------------------- BEIR

def write_beir(folder, n_docs=150, n_queries=8, seed=0):
    """A small BEIR folder; query q has 1-4 relevant documents, one judged 0, one not in the corpus."""
    rng = np.random.default_rng(seed)
    folder.mkdir()
    (folder / "qrels").mkdir()
    with open(folder / "corpus.jsonl", "w") as out:
        for d in range(n_docs):
            out.write(json.dumps({"_id": f"doc{d}", "title": f"title {d % 7}", "text": f"text of document {d}"}) + "\n")
    with open(folder / "queries.jsonl", "w") as out:
        for q in range(n_queries + 1):  # the last query has no judgement: not evaluated
            out.write(json.dumps({"_id": str(q), "text": f"question number {q}"}) + "\n")
    lines = ["query-id\tcorpus-id\tscore"]
    for q in range(n_queries):
        for d in rng.choice(n_docs, size=rng.integers(1, 5), replace=False):
            lines.append(f"{q}\tdoc{d}\t1")
        lines.append(f"{q}\tdoc{rng.integers(n_docs)}\t0")
    lines.append("0\tmissing-doc\t1")
    (folder / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n")
    return folder


def test_beir_metrics_match_pytrec_eval(tmp_path):
    folder = write_beir(tmp_path / "beir")
    encoder = HashEncoder(dim=4)  # low dimension: relevant documents spread over the ranking
    metrics, per_query = evaluate_beir(encoder, folder, model="hash", language="xx", per_query=True, cache=False)
    data = load_beir(folder)
    docs = (data.corpus["title"] + " " + data.corpus["text"]).tolist()
    scores = encoder.encode(data.queries["text"].tolist(), "query") @ encoder.encode(docs, "passage").T
    run = {qid: {d: float(s) for d, s in zip(data.corpus["_id"], row)} for qid, row in zip(data.queries["_id"], scores)}
    qrels = {}
    for qid, did, score in data.qrels.itertuples(index=False):
        qrels.setdefault(qid, {})[did] = int(score)
    expected = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100"}).evaluate(run)
    got = per_query.set_index(["query_id", "metric"])["value"]
    assert sorted(per_query["query_id"].unique()) == sorted(qrels)
    for qid, values in expected.items():
        assert got[qid, "nDCG@10"] == pytest.approx(values["ndcg_cut_10"], abs=1e-12)
        assert got[qid, "R@100"] == pytest.approx(values["recall_100"], abs=1e-12)
    assert 0 < got[:, "R@100"].mean() < 1  # the check is not trivial
    value = metrics.set_index(["query_lang", "metric"])["value"]
    assert value["xx", "nDCG@10"] == pytest.approx(np.mean([v["ndcg_cut_10"] for v in expected.values()]))
    assert value[ALL, "nDCG@10"] == value["xx", "nDCG@10"]  # the macro average of one language
    assert set(metrics["query_lang"]) == {"xx", ALL} and set(metrics["setting"]) == {MONO}


def test_beir_languages_are_macro_averaged_by_aggregate(tmp_path):
    """MIRACL's way: the per-query tables of several languages, concatenated, give per-language
    means and their unweighted mean (not the mean over all queries)."""
    encoder = HashEncoder(dim=4)
    parts = []
    for lang, n in (("xx", 3), ("yy", 9)):
        (tmp_path / lang).mkdir()
        folder = write_beir(tmp_path / lang / "corpus", n_queries=n, seed=n)  # one dataset name, as MIRACL's
        parts.append(evaluate_beir(encoder, folder, model="hash", language=lang, per_query=True, cache=False)[1])
    per_query = pd.concat(parts, ignore_index=True)
    value = aggregate(per_query).set_index(["query_lang", "metric"])["value"]
    means = [part.groupby("metric")["value"].mean() for part in parts]
    for metric in ("nDCG@10", "R@100"):
        assert value["xx", metric] == pytest.approx(means[0][metric])
        assert value[ALL, metric] == pytest.approx((means[0][metric] + means[1][metric]) / 2)
    assert value[ALL, "nDCG@10"] != pytest.approx(per_query.query("metric == 'nDCG@10'")["value"].mean())


def test_beir_input_errors(tmp_path):
    with pytest.raises(EvaluationError, match="not a BEIR folder"):
        load_beir(tmp_path / "nowhere")
    folder = write_beir(tmp_path / "beir")
    (folder / "qrels" / "test.tsv").unlink()
    with pytest.raises(EvaluationError, match="test.tsv: missing"):
        load_beir(folder)


def reference_aggregate(per_query):
    """The definition of the tidy table with pandas groupby: language-pair means, then their means."""
    pairs = per_query.groupby(["model", "strategy", "seed", "eval_dataset", "setting", "query_lang", "pool_lang",
                               "metric"], observed=True)["value"].mean()
    macro = pairs.groupby(level=["model", "strategy", "seed", "eval_dataset", "setting", "metric"]).mean()
    macro = macro.to_frame().assign(query_lang=ALL, pool_lang=ALL).set_index(["query_lang", "pool_lang"], append=True)
    return pd.concat([pairs, macro.reorder_levels(pairs.index.names)["value"]])


def test_aggregate_equals_the_groupby_definition_in_any_row_order():
    data = load_lareqa("mlqa-r", max_ids=40)
    rng = np.random.default_rng(3)
    embeddings = (rng.standard_normal((len(data.questions), 8)), rng.standard_normal((len(data.candidates), 8)))
    table, queries = evaluate_lareqa(embeddings, data, model="m", per_query=True)
    assert table.equals(aggregate(queries))
    # two seeds, plain string columns, shuffled rows and missing values
    both = pd.concat([queries, evaluate_lareqa(embeddings, data, model="m", seed=1, per_query=True)[1]])
    both = both.astype({c: str for c in ("model", "strategy", "eval_dataset", "setting", "query_lang", "pool_lang",
                                         "query_id", "metric")}).sample(frac=1.0, random_state=0)
    both.loc[both.index[::7], "value"] = np.nan
    ours = aggregate(both)
    assert list(ours.columns) == list(METRIC_COLUMNS) and len(ours) == 2 * len(table)
    expected = reference_aggregate(both)
    got = ours.set_index(list(expected.index.names))["value"]
    # both sum at most a few thousand float64 values in [0, 1]: rounding ~ 1e3 * 2^-53, far below 1e-12
    pd.testing.assert_series_equal(got.sort_index(), expected.sort_index(), check_exact=False, rtol=1e-12,
                                   check_names=False)
    # another order of the rows: the same table (sums in another order: same rounding bound)
    pd.testing.assert_frame_equal(aggregate(both.sort_values(["seed", "setting"])), ours, check_exact=False,
                                  rtol=1e-12)


def test_beir_top_k_from_a_flat_faiss_index_equals_the_dense_ranking(tmp_path):
    class UnitHashEncoder(HashEncoder):  # unit vectors, as DualEncoder's: faiss ranks by cosine
        def encode(self, texts, kind):
            vectors = super().encode(texts, kind)
            return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    folder = write_beir(tmp_path / "beir")
    encoder = UnitHashEncoder(dim=4)
    dense = evaluate_beir(encoder, folder, model="hash", language="xx", per_query=True, cache=False)[1]
    flat = evaluate_beir(encoder, folder, model="hash", language="xx", per_query=True, cache=False,
                         index_type="flat")[1]
    pd.testing.assert_frame_equal(flat, dense)  # exact search: the same top 100, so the same nDCG@10 and R@100
    assert 0 < dense.loc[dense.metric == "R@100", "value"].mean() < 1  # some relevant documents fall beyond 100
