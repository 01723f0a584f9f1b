"""faiss search over LAReQA pools (hybridlib.search): the study's ranking, the cache, bad input.

The central check: the top k of the exact faiss index (``IndexFlatIP``) equals the top k of the
study's own score matrix (the dot products the evaluation ranks by) on a real XQuAD-R pool and
the real default encoder, and its relevant hits give the evaluation's per-query R@10.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hybridlib import search as S
from hybridlib.config import load_params
from hybridlib.data import load_lareqa
from hybridlib.errors import HybridlibError
from hybridlib.evaluate import candidate_texts, encode_texts, evaluate_lareqa

K = 10


@pytest.fixture(scope="module")
def small_data():
    """Two languages, the paragraphs of the first five question ids: a real pool of a few dozen sentences."""
    return load_lareqa("xquad-r", ["en", "de"], max_ids=5)


def fp32_dot_tolerance(dim: int) -> float:
    """Bound on |faiss score - exact cosine| and |study score - exact cosine| for unit vectors.

    An fp32 dot product of length ``dim`` has a rounding error of at most about dim * 2^-24 times
    the sum of |q_i c_i|, which is <= |q| |c| = 1 (Cauchy-Schwarz). faiss renormalises the
    vectors (a norm of dim terms and a division: relative change <= dim * 2^-24 each), so its
    scores are within 2 * dim * 2^-24 of the exact cosine, the study's fp32 scores within dim * 2^-24.
    """
    return 2 * dim * 2.0 ** -24


# ----------------------------------------------------------------------------- the study's ranking
@pytest.mark.slow
def test_flat_top_k_is_the_studys_ranking(default_encoder_memo, tmp_path):
    encoder = default_encoder_memo  # its embeddings of these texts are shared with tests/test_evaluate.py
    data = load_lareqa("xquad-r", max_ids=12)  # 11 languages, 132 questions, ~100 candidates
    queries = encode_texts(encoder, data.questions["text"].tolist(), "query", cache=tmp_path, progress=False)
    candidates = encode_texts(encoder, candidate_texts(data), "passage", cache=tmp_path, progress=False)
    exact = queries.astype(np.float64) @ candidates.astype(np.float64).T  # the cosines, without rounding
    study = queries @ candidates.T  # the evaluation's fp32 scores
    tol = fp32_dot_tolerance(queries.shape[1])

    index = S.build_index(encoder, data, cache=tmp_path, progress=False)
    table = S.search(encoder, index, data.questions, K, cache=tmp_path)
    assert len(table) == len(data.questions) * K
    hits = table["candidate_row"].to_numpy().reshape(-1, K)
    scores = table["score"].to_numpy().reshape(-1, K)
    rows = np.arange(len(hits))[:, None]
    np.testing.assert_allclose(scores, exact[rows, hits], rtol=0, atol=tol)

    # the same set as the top k of the exact scores, up to near ties across the k-th place
    ordered = -np.sort(-exact, axis=1)
    kth = ordered[:, K - 1:K]
    assert np.all(exact[rows, hits] >= kth - 2 * tol)
    must = exact > kth + 2 * tol
    assert np.all(must.sum(axis=1) == np.array([np.isin(np.flatnonzero(m), h).sum() for m, h in zip(must, hits)]))

    # without near ties in the top k + 1, faiss's order is the study's ranking (hybridlib.metrics' ranks)
    from hybridlib import metrics as M

    clear = np.all(np.diff(ordered[:, :K + 1], axis=1) < -2 * tol, axis=1)
    assert clear.sum() >= len(clear) // 2, "too few rows without near ties to compare orders"
    ranks = M.ranks_of(study, hits)
    assert np.array_equal(ranks[clear], np.tile(np.arange(1, K + 1), (clear.sum(), 1)))

    # its relevant hits give the evaluation's per-query R@10 of the multilingual pool
    _, per_query = evaluate_lareqa((queries, candidates), data, model="m", per_query=True)
    recall = per_query[(per_query["setting"] == "multilingual") & (per_query["metric"] == "R@10")]
    recall = recall.set_index(["query_lang", "query_id"])["value"].astype(float)
    n_answers = data.questions.groupby("id")["lang"].nunique()
    found = table.groupby(["query_lang", "query_id"], sort=False)["relevant"].sum().astype(float)
    ours = found / n_answers.reindex(found.index.get_level_values("query_id")).to_numpy()
    keys = list(zip(data.questions["lang"][clear], data.questions["id"][clear]))
    np.testing.assert_allclose(ours.loc[keys].to_numpy(), recall.loc[keys].to_numpy(), rtol=0, atol=1e-12)


def test_approximate_indexes_find_the_exact_neighbours():
    rng = np.random.default_rng(0)
    corpus, queries = rng.standard_normal((120, 16)), rng.standard_normal((20, 16))
    flat_scores, flat_rows = S.top_k(queries, corpus, 5)
    normalised = corpus / np.linalg.norm(corpus, axis=1, keepdims=True)
    exact = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ normalised.T
    assert np.array_equal(flat_rows, np.argsort(-exact, axis=1)[:, :5])  # Gaussian data: no near ties
    np.testing.assert_allclose(flat_scores, np.sort(exact, axis=1)[:, ::-1][:, :5], atol=fp32_dot_tolerance(16))
    # 120 points: HNSW's search list (128) holds the whole graph; IVF probes all of its 3 cells
    for index_type in ("hnsw", "ivf"):
        scores, rows = S.top_k(queries, corpus, 5, index_type=index_type)
        assert np.array_equal(rows, flat_rows), index_type
        np.testing.assert_allclose(scores, flat_scores, atol=fp32_dot_tolerance(16))


@pytest.mark.parametrize("k", [0, -1, 121])
def test_top_k_rejects_k_outside_the_corpus(k):
    with pytest.raises(S.SearchError, match="between 1 and the corpus size 120"):
        S.top_k(np.ones((2, 4)), np.ones((120, 4)), k)


# ----------------------------------------------------------------------------------- the table
def test_search_marks_the_answers_of_a_dataset_question(tiny_encoder, small_data, tmp_path):
    index = S.build_index(tiny_encoder, small_data, cache=tmp_path, progress=False)
    asked = small_data.questions.iloc[7]
    table = S.search(tiny_encoder, index, f"{asked['lang']}:{asked['id']}", k=len(index), cache=tmp_path)
    assert tuple(table.columns) == S.SEARCH_COLUMNS
    assert table["rank"].tolist() == list(range(1, len(index) + 1))
    assert np.all(np.diff(table["score"].to_numpy()) <= 0)
    assert set(table["question"]) == {asked["text"]} and set(table["query_lang"]) == {asked["lang"]}
    answers = set(small_data.questions.loc[small_data.questions["id"] == asked["id"], "candidate"])
    assert set(table.loc[table["relevant"].astype(bool), "candidate_row"]) == answers
    assert table["candidate_lang"].tolist() == small_data.candidates["lang"][table["candidate_row"]].tolist()


def test_free_text_has_no_relevance_and_one_language_pool_stays_in_it(tiny_encoder, small_data, tmp_path):
    index = S.build_index(tiny_encoder, small_data, "de", cache=tmp_path, progress=False)
    table = S.search(tiny_encoder, index, ["Wer war Martin Luther?", "Who won?"], k=3, cache=tmp_path)
    assert len(table) == 6 and table["relevant"].isna().all() and table["query_id"].isna().all()
    assert set(table["candidate_lang"]) == {"de"}
    with pytest.raises(S.SearchError, match="has no language 'fr'"):
        S.build_index(tiny_encoder, small_data, "fr", cache=tmp_path)
    with pytest.raises(S.SearchError, match="empty query"):
        S.search(tiny_encoder, index, "  ", k=3, cache=tmp_path)


def test_own_language_share_counts_the_top_k_in_the_query_language(tiny_encoder, small_data, tmp_path):
    index = S.build_index(tiny_encoder, small_data, cache=tmp_path, progress=False)
    shares = S.own_language_share(tiny_encoder, index, k=4, cache=tmp_path)
    queries = encode_texts(tiny_encoder, small_data.questions["text"].tolist(), "query", cache=tmp_path)
    candidates = encode_texts(tiny_encoder, candidate_texts(small_data), "passage", cache=tmp_path)
    top = np.argsort(-(queries @ candidates.T), axis=1, kind="stable")[:, :4]
    expected = (small_data.candidates["lang"].to_numpy()[top] == small_data.questions["lang"].to_numpy()[:, None])
    assert shares["query_id"].tolist() == small_data.questions["id"].tolist()
    # a random tiny encoder may tie: compare where the 4th and 5th scores differ clearly
    scores = np.sort(queries @ candidates.T, axis=1)[:, ::-1]
    clear = scores[:, 3] - scores[:, 4] > 2 * fp32_dot_tolerance(tiny_encoder.dim)
    assert clear.any()
    np.testing.assert_allclose(shares["own_language_share"][clear], expected.mean(axis=1)[clear])


def test_own_language_share_is_the_evaluations_own_language_metric(tiny_encoder, small_data, tmp_path):
    from hybridlib import metrics as M

    if not hasattr(M, "own_pool_share_at_k"):
        pytest.skip("hybridlib.metrics has no own_pool_share_at_k (the evaluation's own-language share) yet")
    index = S.build_index(tiny_encoder, small_data, cache=tmp_path, progress=False)
    ours = S.own_language_share(tiny_encoder, index, k=K, cache=tmp_path)["own_language_share"].to_numpy()
    queries = encode_texts(tiny_encoder, small_data.questions["text"].tolist(), "query", cache=tmp_path)
    candidates = encode_texts(tiny_encoder, candidate_texts(small_data), "passage", cache=tmp_path)
    languages = sorted(small_data.candidates["lang"].unique())
    order = np.argsort(small_data.candidates["lang"].map(languages.index).to_numpy(), kind="stable")
    bounds = np.concatenate([[0], np.cumsum(small_data.candidates["lang"].value_counts()[languages])])
    own = small_data.questions["lang"].map(languages.index).to_numpy()
    theirs = M.own_pool_share_at_k(queries @ candidates[order].T, bounds, own, k=K)
    # they share ties at the k-th score out evenly, faiss puts them in some order: compare without such ties
    scores = np.sort(queries @ candidates.T, axis=1)[:, ::-1]
    clear = scores[:, K - 1] - scores[:, K] > 2 * fp32_dot_tolerance(tiny_encoder.dim)
    assert clear.any()
    np.testing.assert_allclose(ours[clear], theirs[clear], rtol=0, atol=1e-12)


def test_rank_distance_of_a_question_is_the_metrics_one(tiny_encoder, small_data, tmp_path):
    from hybridlib import metrics as M

    index = S.build_index(tiny_encoder, small_data, cache=tmp_path, progress=False)
    asked = small_data.questions.iloc[2]
    table = S.question_rank_distances(tiny_encoder, index, f"{asked['lang']}:{asked['id']}", cache=tmp_path)
    query = encode_texts(tiny_encoder, small_data.questions["text"].tolist(), "query", cache=tmp_path)[[2]]
    candidates = encode_texts(tiny_encoder, candidate_texts(small_data), "passage", cache=tmp_path)
    mask = small_data.candidates.index.isin(small_data.questions.loc[small_data.questions["id"] == asked["id"],
                                                                     "candidate"])[None, :]
    expected = M.rank_distance(M.relevant_ranks(query @ candidates.T, mask))
    assert table["rank_distance"].tolist() == expected.tolist()
    with pytest.raises(S.SearchError, match="needs dataset questions"):
        S.question_rank_distances(tiny_encoder, index, "free text", cache=tmp_path)


# ----------------------------------------------------------------------------------- the cache
def _count_encodes(encoder, monkeypatch) -> list:
    calls = []
    original = encoder.encode

    def counting(texts, kind, batch_size=64, progress=True):
        calls.append((kind, len(texts)))
        return original(texts, kind, batch_size=batch_size, progress=progress)

    monkeypatch.setattr(encoder, "encode", counting)
    return calls


def test_index_is_saved_next_to_the_embeddings_and_reused(tiny_encoder, small_data, tmp_path, monkeypatch):
    calls = _count_encodes(tiny_encoder, monkeypatch)
    first = S.build_index(tiny_encoder, small_data, cache=tmp_path, progress=False)
    assert first.path.parent == tmp_path and first.path.is_file() and calls == [("passage", len(first))]
    before = S.search(tiny_encoder, first, "Who won?", k=5, cache=tmp_path)
    for npy in tmp_path.glob("*.npy"):  # without the embeddings, only the saved index can answer
        npy.unlink()
    calls.clear()
    second = S.build_index(tiny_encoder, small_data, cache=tmp_path, progress=False)
    assert calls == [] and second.path == first.path
    pd.testing.assert_frame_equal(S.search(tiny_encoder, second, "Who won?", k=5, cache=tmp_path), before)
    # another pool or index type is another file; no cache, no file
    assert S.build_index(tiny_encoder, small_data, "de", cache=tmp_path).path != first.path
    assert S.build_index(tiny_encoder, small_data, index_type="hnsw", cache=tmp_path).path != first.path
    assert S.build_index(tiny_encoder, small_data, cache=False).path is None


def test_an_index_that_does_not_fit_is_rebuilt(tiny_encoder, small_data, tmp_path):
    import faiss

    path = S.build_index(tiny_encoder, small_data, cache=tmp_path, progress=False).path
    faiss.write_index(faiss.IndexFlatIP(tiny_encoder.dim), str(path))  # an empty index under the right name
    assert S.build_index(tiny_encoder, small_data, cache=tmp_path, progress=False).index.ntotal == \
        len(small_data.candidates)


# ------------------------------------------------------------------------------- models of a run
def test_a_run_model_without_weights_searches_by_its_stored_embeddings(tiny_encoder, small_data, tmp_path, caplog):
    params = load_params(Path(__file__).resolve().parents[1] / "params" / "smoke.yaml")
    run_dir, stored = tmp_path / "run", tmp_path / "run" / "embeddings"
    direct = S.search(tiny_encoder, S.build_index(tiny_encoder, small_data, cache=stored),
                      small_data.questions.iloc[:3], k=4, cache=stored)  # fills the run's embedding cache
    S.write_encoder_record(tiny_encoder, stored / "hybrid-seed0.json")
    model = S.run_model(params, run_dir, "hybrid")
    assert model.label == "hybrid-seed0" and isinstance(model.encoder, S.StoredEncoder)
    for path in stored.glob("*.faiss"):
        path.unlink()
    index = S.pool_indexes([model], small_data)[model.label]
    pd.testing.assert_frame_equal(S.search(model.encoder, index, small_data.questions.iloc[:3], k=4,
                                           cache=model.cache), direct)
    with pytest.raises(S.SearchError, match="its weights were not kept .* no embeddings of these 1 query texts"):
        S.search(model.encoder, index, "free text", k=4, cache=model.cache)
    with pytest.raises(S.SearchError, match="no model 'x-y-seed0'"):
        S.run_model(params, run_dir, "x-y")
    with caplog.at_level(logging.WARNING):
        assert [m.label for m in S.run_models(params, run_dir, ["x-y", "hybrid"])] == ["hybrid-seed0"]
    assert "x-y: left out" in caplog.text


def test_side_by_side_colours_languages_and_frames_answers(tiny_encoder, small_data, tmp_path):
    index = S.build_index(tiny_encoder, small_data, cache=tmp_path, progress=False)
    asked = small_data.questions.iloc[0]
    question = f"{asked['lang']}:{asked['id']}"
    results = {"a": S.search(tiny_encoder, index, question, k=len(index), cache=tmp_path)}
    results["b"] = results["a"].iloc[::-1].assign(rank=results["a"]["rank"].to_numpy())
    table = S.side_by_side(results)
    assert list(table.columns.get_level_values(0).unique()) == ["a", "b"] and len(table) == len(index)
    html = S.style_side_by_side(table, small_data.languages, asked["lang"]).to_html()
    colours = S.language_colours(small_data.languages)
    assert all(colour in html for colour in colours.values())
    framed = sum(selectors.count("#T_") for selectors, body in re.findall(r"([^{}]+)\{([^}]*)\}", html)
                 if "border: 2px solid" in body)
    assert framed == 2 * 4 * int(results["a"]["relevant"].sum())  # two models, 4 cells per relevant hit
    assert html.count("✓") == 2 * int(results["a"]["relevant"].sum())


def test_own_language_figure_has_a_bar_per_language_and_model():
    shares = pd.DataFrame({"query_lang": ["de", "en", "de", "en"], "query_id": ["1", "1", "1", "1"],
                           "own_language_share": [0.5, 0.3, 0.2, 0.1], "model": ["a", "a", "b", "b"]})
    fig = S.own_language_figure(shares, k=10, pool_languages=2)
    heights = sorted(round(p.get_height(), 6) for p in fig.axes[0].patches if p.get_height() > 0)
    assert heights == [0.1, 0.2, 0.3, 0.5]


# ----------------------------------------------------------------------------------- the command
@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """A fresh $HYBRIDLIB_CACHE: a bad command must leave it empty."""
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("HYBRIDLIB_CACHE", str(cache))
    return cache


@pytest.mark.parametrize("arguments, message", [
    (dict(model="{missing}", text="Wer war Martin Luther?"), "no such model folder"),
    (dict(text=""), "empty query"),
    (dict(text="   "), "empty query"),
    (dict(k=0), "-k 0: must be at least 1"),
    (dict(k=-3), "-k -3: must be at least 1"),
    (dict(k=100_000), "-k 100000: larger than the pool"),
    (dict(lang="de", k=1277), r"-k 1277: larger than the pool \(1276 candidates of xquad-r, de\)"),
    (dict(lang="fr"), "xquad-r has no language 'fr'"),
    (dict(dataset="mlqa-r", lang="ru"), "mlqa-r has no language 'ru'"),
    (dict(dataset="squad"), "unknown dataset 'squad'"),
])
def test_search_cli_rejects_bad_input_in_one_line(arguments, message, empty_cache, tmp_path):
    arguments = {"model": "default", "text": "Wer war Martin Luther?", **arguments}
    arguments["model"] = arguments["model"].format(missing=tmp_path / "no-such-model")
    with pytest.raises(S.SearchError, match=message) as error:
        S.search_cli(**arguments)
    assert isinstance(error.value, HybridlibError) and "\n" not in str(error.value)
    assert not any(empty_cache.rglob("*")), "a rejected search wrote files"


def test_search_cli_prints_the_top_k(tiny_model_dir, small_data, empty_cache, monkeypatch):
    monkeypatch.setattr("hybridlib.data.load_lareqa", lambda dataset: small_data)  # a small pool, same code path
    table = S.search_cli(str(tiny_model_dir), "Wer war Martin Luther?", k=5)
    assert table["rank"].tolist() == [1, 2, 3, 4, 5] and table["relevant"].isna().all()
    text = S.format_results(table)
    assert text.splitlines()[0].split() == ["rank", "score", "lang", "candidate"] and len(text.splitlines()) == 6
    assert list(empty_cache.rglob("*.faiss")), "the index is cached"


def test_the_command_exits_2_on_bad_input(capsys):
    from hybridlib.cli import build_parser, main

    commands = build_parser()._subparsers._group_actions[0].choices
    if "search" not in commands:
        pytest.skip("`hybridlib search` is not registered in hybridlib/cli.py yet")
    assert main(["search", "default", "", "-k", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "hybridlib search: error: empty query: give the text to search for"


def test_encoder_record_holds_what_the_cache_key_reads(tiny_encoder, tmp_path):
    path = S.write_encoder_record(tiny_encoder, tmp_path / "m.json")
    record = json.loads(path.read_text())
    stored = S.StoredEncoder(record)
    for attribute in ("name", "prefixes", "max_length", "pooling", "precision"):
        assert getattr(stored, attribute) == getattr(tiny_encoder, attribute)
    from hybridlib.evaluate import model_fingerprint

    assert model_fingerprint(stored) == model_fingerprint(tiny_encoder)


def test_pick_question_names_a_question_of_the_pool(small_data):
    first_de = small_data.questions.loc[small_data.questions["lang"] == "de", "id"].iloc[0]
    assert S.pick_question(small_data, "", "de") == f"de:{first_de}"
    assert S.pick_question(small_data, first_de, "en") == f"en:{first_de}"
    assert S.pick_question(small_data, first_de, "de", "  Wer war Martin Luther? ") == "Wer war Martin Luther?"
    with pytest.raises(S.SearchError, match="no questions in 'ru'"):
        S.pick_question(small_data, "", "ru")
    with pytest.raises(S.SearchError, match="'nope' is not in this run's xquad-r pool in de"):
        S.pick_question(small_data, "nope", "de")
