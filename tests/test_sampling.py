"""Batch samplers checked against their definitions (docs/paper.md, "Batch sampling") over many batches.

Frequencies are compared with their expectation within 4 binomial standard deviations
(a false alarm rate of ~6e-5 per check; the seeds are fixed, so the tests are deterministic).
"""
import dataclasses
import io
import re
from collections import Counter
from itertools import islice

import numpy as np
import pandas as pd
import pytest
import torch

from hybridlib.constants import BATCH_STRATEGIES
from hybridlib.errors import HybridlibError
from hybridlib.sampling import NO_ROW, RANDOM_STREAMS, BatchSampler, SamplingError

LANGS = ["de", "en", "es", "zh"]


def make_pairs(n_ids: int = 200, seed: int = 0, prefix: str = "q") -> pd.DataFrame:
    """A pairs table: every id in English, each other language with probability 0.6; 10% English-only."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_ids):
        langs = ["en"] if i % 10 == 0 else ["en"] + [l for l in LANGS if l != "en" and rng.random() < 0.6]
        for lang in langs:
            rows.append((f"{prefix}{i}", lang, f"{lang} question {i}", f"{lang} answer {i}", [f"{lang} other {i}"]))
    table = pd.DataFrame(rows, columns=["id", "lang", "query", "positive", "negatives"])
    return table.sample(frac=1.0, random_state=seed).reset_index(drop=True)  # rows in no particular order


@pytest.fixture(scope="module")
def pairs():
    return make_pairs()


def take(sampler, count):
    return list(islice(iter(sampler), count))


def within_binomial(count: int, trials: int, p: float, sigmas: float = 4.0) -> bool:
    return abs(count - trials * p) <= sigmas * np.sqrt(trials * p * (1 - p))


def batch_langs(pairs, batch):
    lang = pairs["lang"].to_numpy()
    return lang[list(batch.query_rows)], lang[list(batch.passage_rows)]


def check_same_ids_and_distinct(pairs, batch):
    ids = pairs["id"].to_numpy()
    q_ids, p_ids = ids[list(batch.query_rows)], ids[list(batch.passage_rows)]
    assert (q_ids == p_ids).all()
    assert len(set(q_ids)) == len(q_ids), "a question id twice in one batch"


def test_x_x_mono_batches_have_one_language_drawn_uniformly(pairs):
    n = 3000
    batches = take(BatchSampler(pairs, "x-x-mono", batch_size=16, seed=1), n)
    chosen = Counter()
    for batch in batches:
        q_langs, p_langs = batch_langs(pairs, batch)
        assert batch.kind == "x-x-mono" and len(batch) == 16
        assert set(q_langs) == set(p_langs) and len(set(q_langs)) == 1
        assert batch.query_rows == batch.passage_rows
        check_same_ids_and_distinct(pairs, batch)
        chosen[q_langs[0]] += 1
    assert set(chosen) == set(LANGS)
    for lang in LANGS:
        assert within_binomial(chosen[lang], n, 1 / len(LANGS)), chosen


def test_x_x_mono_draws_only_from_the_training_languages(pairs):
    batches = take(BatchSampler(pairs, "x-x-mono", batch_size=8, seed=0, languages=["en", "zh"]), 500)
    langs = Counter(batch_langs(pairs, b)[0][0] for b in batches)
    assert set(langs) == {"en", "zh"}
    assert within_binomial(langs["zh"], 500, 0.5)


def test_x_y_pairs_are_all_cross_lingual_with_uniform_language_choice(pairs):
    index_of = {}  # id -> its languages, sorted
    for qid, lang in zip(pairs["id"], pairs["lang"]):
        index_of.setdefault(qid, []).append(lang)
    n_pairs, ordered = 0, Counter()
    for batch in take(BatchSampler(pairs, "x-y", batch_size=16, seed=2), 3000):
        assert batch.kind == "x-y"
        check_same_ids_and_distinct(pairs, batch)
        q_langs, p_langs = batch_langs(pairs, batch)
        assert (q_langs != p_langs).all()
        for qid, ql, pl in zip(pairs["id"].to_numpy()[list(batch.query_rows)], q_langs, p_langs):
            langs = sorted(index_of[qid])
            assert len(langs) >= 2
            if len(langs) == 3:  # 6 ordered (query, passage) language pairs, each 1/6
                ordered[(langs.index(ql), langs.index(pl))] += 1
                n_pairs += 1
    assert len(ordered) == 6
    for count in ordered.values():
        assert within_binomial(count, n_pairs, 1 / 6), ordered


def test_x_y_never_uses_single_language_ids(pairs):
    single = {qid for qid, n in pairs.groupby("id").size().items() if n == 1}
    assert single  # the fixture has English-only ids
    used = {pairs["id"][r] for b in take(BatchSampler(pairs, "x-y", batch_size=16, seed=0), 200)
            for r in b.query_rows}
    assert not used & single


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
def test_hybrid_mixes_kinds_with_probability_alpha(pairs, alpha):
    n = 3000
    batches = take(BatchSampler(pairs, "hybrid", batch_size=16, seed=3, alpha=alpha), n)
    kinds = Counter(b.kind for b in batches)
    assert set(kinds) <= {"x-x-mono", "x-y"}
    assert within_binomial(kinds["x-x-mono"], n, alpha)
    for batch in batches:
        q_langs, p_langs = batch_langs(pairs, batch)
        check_same_ids_and_distinct(pairs, batch)
        if batch.kind == "x-x-mono":
            assert len(set(q_langs) | set(p_langs)) == 1
        else:
            assert (q_langs != p_langs).all()


def test_x_x_pairs_are_monolingual_with_languages_mixed_in_a_batch(pairs):
    mixed = 0
    for batch in take(BatchSampler(pairs, "x-x", batch_size=16, seed=0), 300):
        q_langs, p_langs = batch_langs(pairs, batch)
        check_same_ids_and_distinct(pairs, batch)
        assert (q_langs == p_langs).all() and batch.kind == "x-x"
        mixed += len(set(q_langs)) > 1
    assert mixed == 300


def test_en_en_is_english_only(pairs):
    for batch in take(BatchSampler(pairs, "en-en", batch_size=16, seed=0), 200):
        q_langs, p_langs = batch_langs(pairs, batch)
        assert set(q_langs) == set(p_langs) == {"en"} and batch.kind == "en-en"


def test_each_pass_over_the_pool_uses_every_id_once(pairs):
    # x-x draws from all 200 ids: 25 batches of 16 = exactly two passes
    batches = take(BatchSampler(pairs, "x-x", batch_size=16, seed=5), 25)
    ids = pairs["id"].to_numpy()
    first_pass = [ids[r] for b in batches[:12] for r in b.query_rows]
    assert len(set(first_pass)) == len(first_pass) == 192
    counts = Counter(ids[r] for b in batches for r in b.query_rows)
    assert set(counts.values()) == {2} and len(counts) == 200


@pytest.mark.parametrize("strategy", BATCH_STRATEGIES)
def test_same_seed_same_batches_other_seed_other_batches(pairs, strategy):
    first = take(BatchSampler(pairs, strategy, batch_size=8, seed=7), 50)
    again = take(BatchSampler(pairs, strategy, batch_size=8, seed=7), 50)
    other = take(BatchSampler(pairs, strategy, batch_size=8, seed=8), 50)
    assert first == again
    assert first != other


@pytest.mark.parametrize("strategy", ["hybrid", "x-y", "x-x-mono"])
def test_rank_shards_are_disjoint_and_make_the_global_batch(pairs, strategy):
    world = 4
    whole = take(BatchSampler(pairs, strategy, batch_size=16, seed=4, parallel_queries=True), 100)
    shards = [take(BatchSampler(pairs, strategy, batch_size=16, seed=4, rank=r, world_size=world,
                                parallel_queries=True), 100) for r in range(world)]
    for step, batch in enumerate(whole):
        parts = [shards[r][step] for r in range(world)]
        assert all(len(p) == 4 and p.kind == batch.kind and p.dataset == batch.dataset for p in parts)
        assert sum((p.query_rows for p in parts), ()) == batch.query_rows
        assert sum((p.passage_rows for p in parts), ()) == batch.passage_rows
        assert sum((p.parallel_rows for p in parts), ()) == batch.parallel_rows
        rows = [set(p.query_rows) for p in parts]
        assert all(not (rows[a] & rows[b]) for a in range(world) for b in range(a + 1, world))


def test_datasets_are_mixed_in_proportion_to_their_size():
    big, small = make_pairs(300, seed=1, prefix="big"), make_pairs(100, seed=2, prefix="small")
    n = 2000
    batches = take(BatchSampler([big, small], "hybrid", batch_size=8, seed=0), n)
    from_big = sum(b.dataset == 0 for b in batches)
    assert within_binomial(from_big, n, 0.75)
    for batch in batches:  # rows index the table the batch comes from
        table = (big, small)[batch.dataset]
        check_same_ids_and_distinct(table, batch)


def test_an_english_only_dataset_joins_only_monolingual_batches():
    multi = make_pairs(200, seed=1, prefix="multi")
    english = make_pairs(200, seed=2, prefix="en")
    english = english[english["lang"] == "en"].reset_index(drop=True)
    n = 2000
    batches = take(BatchSampler([multi, english], "hybrid", batch_size=8, seed=0), n)
    cross = [b for b in batches if b.kind == "x-y"]
    mono = [b for b in batches if b.kind == "x-x-mono"]
    assert all(b.dataset == 0 for b in cross)
    assert within_binomial(sum(b.dataset == 1 for b in mono), len(mono), 0.5)  # 200 ids each


def without_parallel_rows(batch):
    return dataclasses.replace(batch, parallel_rows=None)


@pytest.mark.parametrize("strategy", BATCH_STRATEGIES)
def test_drawing_parallel_query_rows_leaves_the_batches_unchanged(strategy):
    """Issue 14: the objective variants of one seed (with and without the parallel-query term)
    train on the same batches: same kinds, datasets, ids and languages, step after step."""
    tables = [make_pairs(120, seed=1, prefix="a"), make_pairs(80, seed=2, prefix="b")]
    plain = take(BatchSampler(tables, strategy, batch_size=8, seed=11), 400)
    with_parallel = take(BatchSampler(tables, strategy, batch_size=8, seed=11, parallel_queries=True), 400)
    assert all(b.parallel_rows is not None for b in with_parallel)
    assert [without_parallel_rows(b) for b in with_parallel] == plain
    if strategy == "hybrid":
        assert len({b.kind for b in plain}) == 2 and len({b.dataset for b in plain}) == 2


def test_parallel_rows_come_from_their_own_seeded_stream(pairs):
    """The parallel-query rows are a function of the seed: the same seed repeats them, another
    seed changes them even where the batches coincide."""
    def parallel_rows(seed):
        return [b.parallel_rows for b in take(BatchSampler(pairs, "x-x", batch_size=16, seed=seed,
                                                           parallel_queries=True), 50)]
    assert parallel_rows(4) == parallel_rows(4)
    assert parallel_rows(4) != parallel_rows(5)
    assert set(BatchSampler(pairs, "x-x", batch_size=16, seed=0).state_dict()["rngs"]) == set(RANDOM_STREAMS)


@pytest.mark.parametrize("parallel_queries", [False, True])
def test_resuming_from_state_dict_continues_every_stream(pairs, parallel_queries):
    """A state saved as train.py saves it (``torch.save``, loaded with ``weights_only=True``)
    continues the batches and the parallel-query rows exactly."""
    tables = [pairs, make_pairs(80, seed=3, prefix="b")]

    def sampler(seed):
        return BatchSampler(tables, "hybrid", batch_size=16, seed=seed, parallel_queries=parallel_queries)
    reference = take(sampler(9), 60)
    first = sampler(9)
    take(first, 25)
    buffer = io.BytesIO()
    torch.save({"sampler": first.state_dict()}, buffer)
    buffer.seek(0)
    resumed = sampler(123)
    resumed.load_state_dict(torch.load(buffer, weights_only=True)["sampler"])
    assert take(resumed, 35) == reference[25:]
    assert take(first, 35) == reference[25:]


def test_a_state_with_a_single_generator_is_refused(pairs):
    sampler = BatchSampler(pairs, "hybrid", batch_size=16, seed=0)
    old = {"rng": np.random.default_rng(0).bit_generator.state, "streams": sampler.state_dict()["pools"]}
    with pytest.raises(SamplingError, match="predates the independent random streams"):
        sampler.load_state_dict(old)


def test_parallel_rows_are_translations_of_the_query(pairs):
    ids, langs = pairs["id"].to_numpy(), pairs["lang"].to_numpy()
    n_langs = pairs.groupby("id").size()
    for batch in take(BatchSampler(pairs, "hybrid", batch_size=16, seed=0, parallel_queries=True), 200):
        for q, par in zip(batch.query_rows, batch.parallel_rows):
            if par == NO_ROW:
                assert n_langs[ids[q]] == 1
            else:
                assert ids[par] == ids[q] and langs[par] != langs[q]


def test_real_mlqa_r_batches(mlqa_pairs):
    for batch in take(BatchSampler(mlqa_pairs, "hybrid", batch_size=32, seed=0), 100):
        q_langs, p_langs = batch_langs(mlqa_pairs, batch)
        check_same_ids_and_distinct(mlqa_pairs, batch)
        assert (len(set(q_langs) | set(p_langs)) == 1) if batch.kind == "x-x-mono" else (q_langs != p_langs).all()


@pytest.fixture(scope="module")
def mlqa_pairs():
    from hybridlib.sources import load_pairs

    return load_pairs("mlqa-r", ["en", "de", "es"], max_ids=300)


@pytest.mark.parametrize("kwargs, message", [
    (dict(strategy="x-z"), "unknown batch strategy 'x-z'"),
    (dict(alpha=1.5), "alpha must be in [0, 1]"),
    (dict(alpha=-0.1), "alpha must be in [0, 1]"),
    (dict(batch_size=1), "batch_size must be at least 2"),
    (dict(batch_size=150), "batch_size 150 is larger than the"),
    (dict(strategy="x-y", batch_size=190), "ids with at least two languages"),
    (dict(languages=["en", "fr"]), "training languages fr are absent"),
    (dict(strategy="x-y", languages=["en"]), "need at least two languages"),
    (dict(batch_size=10, world_size=4), "does not divide by the 4 processes"),
    (dict(rank=2, world_size=2), "rank 2 is not in 0..1"),
])
def test_bad_settings_raise_a_clear_error_before_any_batch(pairs, kwargs, message):
    settings = dict(tables=pairs, strategy="hybrid", batch_size=16, seed=0) | kwargs
    with pytest.raises(SamplingError, match=re.escape(message)) as error:
        BatchSampler(**settings)
    assert isinstance(error.value, HybridlibError)


def test_en_en_without_english_is_an_error(pairs):
    with pytest.raises(SamplingError, match="en-en batches need English pairs"):
        BatchSampler(pairs[pairs["lang"] != "en"], "en-en", batch_size=4, seed=0)
