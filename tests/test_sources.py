"""Training-pair sources: the JSONL format, mMARCO's parallel table, ``load_pairs`` filters,
and the paper-scale parameter files."""
import json
from pathlib import Path

import pandas as pd
import pytest

from hybridlib import cli, sources
from hybridlib.config import load_params
from hybridlib.data import DataError
from hybridlib.sources import (
    PAIR_COLUMNS,
    build_mmarco_pairs,
    load_jsonl_pairs,
    load_pairs,
    select_mmarco_triples,
    write_jsonl_pairs,
)

PARAMS = Path(__file__).resolve().parents[1] / "params"

ROWS = [
    {"id": "q1", "lang": "en", "query": "Where is Paris?", "positive": "Paris is in France.",
     "negatives": ["Berlin is in Germany.", "Rome is in Italy."]},
    {"id": "q1", "lang": "de", "query": "Wo liegt Paris?", "positive": "Paris liegt in Frankreich.",
     "negatives": ["Berlin liegt in Deutschland."]},
    {"id": 7, "lang": "en", "query": "Who wrote Faust?", "positive": "Goethe wrote Faust."},
    {"id": "q0", "lang": "fr", "query": "Où est Rome ?", "positive": "Rome est en Italie.", "negatives": []},
]


def _write_jsonl(path: Path, rows) -> Path:
    lines = [row if isinstance(row, str) else json.dumps(row, ensure_ascii=False) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_jsonl_rows_load_as_a_pairs_table(tmp_path):
    pairs = load_jsonl_pairs(_write_jsonl(tmp_path / "qa.jsonl", ROWS), hard_negatives=1)
    assert pairs.columns.tolist() == PAIR_COLUMNS
    assert pairs["id"].tolist() == ["q1", "q1", "7", "q0"]  # ids become strings
    assert pairs["lang"].tolist() == ["en", "de", "en", "fr"]
    assert pairs.loc[1, "query"] == "Wo liegt Paris?"
    # negatives cut to hard_negatives; a row without negatives has an empty list
    assert pairs["negatives"].tolist() == [["Berlin is in Germany."], ["Berlin liegt in Deutschland."], [], []]
    assert load_jsonl_pairs(tmp_path / "qa.jsonl", hard_negatives=5).loc[0, "negatives"] == ROWS[0]["negatives"]


def test_written_pairs_read_back_identically(tmp_path):
    pairs = load_jsonl_pairs(_write_jsonl(tmp_path / "qa.jsonl", ROWS), hard_negatives=2)
    again = load_jsonl_pairs(write_jsonl_pairs(pairs, tmp_path / "out" / "copy.jsonl"), hard_negatives=2)
    pd.testing.assert_frame_equal(pairs, again)
    assert not list((tmp_path / "out").glob("*.part"))  # the temporary file was renamed


GOOD = json.dumps(ROWS[0])


@pytest.mark.parametrize("bad, problem", [
    ('{"id": "q2", "lang": "en", "query": "x"', "Expecting"),  # not valid JSON
    ('["q2", "en", "x", "y"]', "expected a JSON object"),
    ('{"id": "q2", "lang": "en", "query": "x"}', "missing key positive"),
    ('{"id": "q2", "lang": "en", "query": "  ", "positive": "y"}', "query is empty"),
    ('{"id": "q2", "lang": "en", "query": "x", "positive": ""}', "positive is empty"),
    ('{"id": "q2", "lang": "", "query": "x", "positive": "y"}', "lang is empty"),
    ('{"id": "q2", "lang": "en", "query": 3, "positive": "y"}', "query must be a string"),
    ('{"id": "q2", "lang": "en", "query": "x", "positive": "y", "negatives": "z"}', "negatives must be a list"),
    ('{"id": "q2", "lang": "en", "query": "x", "positive": "y", "negatives": ["z", ""]}', "negatives[1]"),
    ('{"id": true, "lang": "en", "query": "x", "positive": "y"}', "id must be"),
    ('{"id": "q1", "lang": "en", "query": "x", "positive": "y"}',
     "duplicate row for id 'q1' in language 'en' (first at line 1)"),
])
def test_a_bad_row_is_a_data_error_naming_file_and_line(tmp_path, bad, problem):
    path = _write_jsonl(tmp_path / "qa.jsonl", [GOOD, "", bad])  # line 2 is blank, the bad row is line 3
    with pytest.raises(DataError) as error:
        load_jsonl_pairs(path)
    message = str(error.value)
    assert message.startswith(f"{path}, line 3: ") and problem in message
    assert "\n" not in message


def test_a_missing_or_empty_jsonl_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no such training file"):
        load_jsonl_pairs(tmp_path / "nothing.jsonl")
    with pytest.raises(DataError, match="no training pairs"):
        load_jsonl_pairs(_write_jsonl(tmp_path / "empty.jsonl", [""]))


# -- mMARCO --------------------------------------------------------------------------------

# A miniature mMARCO: passage p<k> and query <q> exist in every language with texts that say
# which id and language they are; the triples give several negatives for some queries.
TRIPLES = [(10, 100, 101), (11, 110, 111), (10, 100, 102), (10, 103, 100), (12, 120, 121),
           (11, 110, 112), (10, 100, 101), (13, 130, 131)]
QIDS = [10, 11, 12, 13]
PIDS = [100, 101, 102, 103, 110, 111, 112, 120, 121, 130, 131]


def _queries(lang, skip=()):
    return [(q, f"query {q} in {lang}") for q in reversed(QIDS) if q not in skip]


def _collection(lang):
    return pd.DataFrame({"pid": PIDS, "text": [f"passage {p} in {lang}" for p in PIDS]})


def test_triples_give_the_first_positive_and_distinct_negatives():
    chosen = select_mmarco_triples(TRIPLES, hard_negatives=2)
    assert list(chosen) == ["10", "11", "12", "13"]  # file order
    # q10: positive of its first triple; 102 after 101; the repeated 101 and the positive
    # 100 (a negative of another positive's triple) are never negatives
    assert chosen["10"] == ("100", ["101", "102"])
    assert chosen["11"] == ("110", ["111", "112"])
    assert chosen["12"] == ("120", ["121"])
    assert select_mmarco_triples(TRIPLES, max_ids=2, hard_negatives=0) == {"10": ("100", []), "11": ("110", [])}


def test_reading_the_triples_stops_once_the_capped_queries_are_complete():
    def stream(rows, limit):
        for k, row in enumerate(rows):
            if k == limit:
                raise AssertionError(f"read more than {limit} triples")
            yield row
    # one negative each: the first two triples are enough
    assert list(select_mmarco_triples(stream(TRIPLES, 2), max_ids=2, hard_negatives=1)) == ["10", "11"]
    # two negatives each: q11's second negative is in the sixth triple
    chosen = select_mmarco_triples(stream(TRIPLES, 6), max_ids=2, hard_negatives=2)
    assert chosen == {"10": ("100", ["101", "102"]), "11": ("110", ["111", "112"])}


def test_mmarco_builder_gives_parallel_rows_sharing_ids():
    languages = ["en", "de", "zh"]
    queries = {lang: _queries(lang, skip=[12] if lang == "zh" else []) for lang in languages}
    collections = {lang: _collection(lang).itertuples(index=False) for lang in languages}
    pairs = build_mmarco_pairs(TRIPLES, queries, collections, max_ids=3, hard_negatives=1)
    assert pairs.columns.tolist() == PAIR_COLUMNS
    # q12 has no Chinese query: no zh row for it; every other (id, lang) once
    assert sorted(zip(pairs["id"], pairs["lang"])) == sorted(
        [(q, l) for q in ["10", "11", "12"] for l in languages if (q, l) != ("12", "zh")])
    for row in pairs.itertuples():
        assert row.query == f"query {row.id} in {row.lang}"
        positive = {"10": 100, "11": 110, "12": 120}[row.id]
        assert row.positive == f"passage {positive} in {row.lang}"
        assert row.negatives == [f"passage {positive + 1} in {row.lang}"]
    # rows sharing an id are translations: the same passage ids in every language
    def strip(text):
        return text.rsplit(" in ", 1)[0]

    for _, group in pairs.groupby("id"):
        assert group["positive"].map(strip).nunique() == 1 and group["query"].map(strip).nunique() == 1


def test_mmarco_builder_rejects_mismatched_or_empty_tables():
    with pytest.raises(DataError, match="queries in de, en but collections in en"):
        build_mmarco_pairs(TRIPLES, {"en": [], "de": []}, {"en": []})
    with pytest.raises(DataError, match="no query has its text"):
        build_mmarco_pairs(TRIPLES, {"en": [(99, "other query")]}, {"en": [(100, "p")]})


def _mirror(folder: Path, languages) -> Path:
    """The miniature mMARCO laid out like the hub repository (TSV, no header)."""
    root = folder / "mmarco"
    (root / "data").mkdir(parents=True)
    (root / sources.MMARCO_TRIPLES).write_text("".join(f"{q}\t{p}\t{n}\n" for q, p, n in TRIPLES))
    for lang in languages:
        name = sources.MMARCO_LANGUAGES[lang]
        for relpath, rows in [(sources.MMARCO_QUERIES.format(name=name), _queries(lang)),
                              (sources.MMARCO_COLLECTION.format(name=name), _collection(lang).to_numpy())]:
            (root / relpath).parent.mkdir(parents=True, exist_ok=True)
            (root / relpath).write_text("".join(f"{key}\t{text}\n" for key, text in rows), encoding="utf-8")
    return folder


def test_load_pairs_streams_mmarco_from_the_mirror_and_caches_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HYBRIDLIB_MIRROR", str(_mirror(tmp_path / "mirror", ["en", "hi"])))
    monkeypatch.setenv("HYBRIDLIB_CACHE", str(tmp_path / "cache"))
    # th is not in mMARCO: like any source, it gives the requested languages it has
    pairs = load_pairs("mmarco", languages=["en", "hi", "th"], max_ids=2, hard_negatives=2)
    assert sorted(zip(pairs["id"], pairs["lang"])) == [("10", "en"), ("10", "hi"), ("11", "en"), ("11", "hi")]
    assert pairs.set_index(["id", "lang"]).loc[("10", "hi"), "negatives"] == ["passage 101 in hi", "passage 102 in hi"]
    cached = list((tmp_path / "cache" / "mmarco").glob("*.jsonl"))
    assert len(cached) == 1
    # the second call reads the cache: it works without the mirror
    monkeypatch.setenv("HYBRIDLIB_MIRROR", str(tmp_path / "empty"))
    pd.testing.assert_frame_equal(load_pairs("mmarco", languages=["en", "hi"], max_ids=2, hard_negatives=2), pairs)


def test_unreachable_mmarco_is_a_data_error_suggesting_jsonl(tmp_path, monkeypatch):
    monkeypatch.setenv("HYBRIDLIB_MIRROR", str(tmp_path / "empty"))
    monkeypatch.setenv("HYBRIDLIB_CACHE", str(tmp_path / "cache"))
    # a revision that does not exist: fails fast whether or not the hub can be reached
    monkeypatch.setattr(sources, "MMARCO_REVISION", "0" * 40)
    with pytest.raises(DataError) as error:
        load_pairs("mmarco", languages=["en"], max_ids=2)
    message = str(error.value)
    assert "unicamp-dl/mmarco" in message and ".jsonl" in message and "HYBRIDLIB_MIRROR" in message
    with pytest.raises(DataError, match="mmarco: no training pairs in th, tr"):
        load_pairs("mmarco", languages=["th", "tr"])
    with pytest.raises(DataError, match="mmarco has no language xx"):
        sources.load_mmarco_pairs(["en", "xx"])


# -- load_pairs filters -----------------------------------------------------------------------

def test_load_pairs_filters_languages_and_caps_ids(tmp_path):
    rows = [{"id": f"q{k}", "lang": lang, "query": f"query {k} {lang}", "positive": f"answer {k} {lang}"}
            for k in range(6) for lang in ("en", "de", "es")]
    path = str(_write_jsonl(tmp_path / "qa.jsonl", rows))
    pairs = load_pairs(path, languages=["de", "es"], max_ids=4)
    assert sorted(pairs["lang"].unique()) == ["de", "es"]
    assert sorted(pairs["id"].unique()) == ["q0", "q1", "q2", "q3"]  # the first ids, sorted
    assert len(pairs) == 8 and pairs.index.tolist() == list(range(8))
    # an English-only source keeps its English rows in a multilingual study ...
    assert set(load_pairs(path, languages=["en", "th"])["lang"]) == {"en"}
    # ... but a source with none of the languages is an error
    with pytest.raises(DataError, match="no training pairs in th, tr"):
        load_pairs(path, languages=["th", "tr"])
    with pytest.raises(DataError, match="unknown training source"):
        load_pairs("msmarco")


def test_load_pairs_on_lareqa_keeps_parallel_ids():
    pairs = load_pairs("xquad-r", languages=["en", "th"], max_ids=5, hard_negatives=1)
    assert len(pairs) == 10 and pairs["id"].nunique() == 5
    assert all(sorted(langs) == ["en", "th"] for langs in pairs.groupby("id")["lang"].apply(list))


def test_load_pairs_on_lareqa_keeps_the_requested_languages_the_source_has():
    # [mlqa-r, xquad-r] with el: each source keeps what it has (MLQA-R has no Greek)
    pairs = load_pairs("mlqa-r", languages=["en", "el"], max_ids=3)
    assert set(pairs["lang"]) == {"en"} and pairs["id"].nunique() == 3
    with pytest.raises(DataError, match="mlqa-r: no training pairs in el, th"):
        load_pairs("mlqa-r", languages=["el", "th"])


# -- paper-scale parameter files ----------------------------------------------------------------

@pytest.mark.parametrize("name, model, pooling", [("paper-xlmr", "xlm-roberta-base", "mean"),
                                                  ("paper-labse", "sentence-transformers/LaBSE", "cls")])
def test_paper_params_are_valid_and_hold_the_papers_settings(name, model, pooling, capsys):
    params = load_params(PARAMS / f"{name}.yaml")
    assert (params.model, params.pooling, params.run_name) == (model, pooling, name)
    assert (params.query_prefix, params.passage_prefix) == ("Query: ", "Passage: ")
    assert (params.batch_size, params.learning_rate, params.weight_decay, params.alpha) == (100, 3e-5, 0.01, 0.5)
    assert params.early_stopping_patience is not None and params.validation_ids > 0
    assert params.eval_datasets == ["xquad-r", "mlqa-r", "miracl"]
    assert "mmarco" in params.train_sources and {"x-x-mono", "x-y", "hybrid"} <= set(params.strategies)
    assert cli.main(["check", str(PARAMS / f"{name}.yaml")]) == 0
    assert ": ok (" in capsys.readouterr().out
