"""LAReQA loading, the mirror / cache / checksum logic, and the training-pairs builder."""
import json
import os
from pathlib import Path

import pytest

from hybridlib import data
from hybridlib.data import DataError, build_training_pairs, fetch_file, load_lareqa, subset_ids

XQUAD_CANDIDATES = {"ar": 1222, "de": 1276, "el": 1234, "en": 1180, "es": 1215, "hi": 1244,
                    "ru": 1219, "th": 852, "tr": 1167, "vi": 1209, "zh": 1196}
MLQA_QUESTIONS = {"ar": 517, "de": 512, "en": 1148, "es": 500, "hi": 507, "vi": 511, "zh": 504}
MLQA_CANDIDATES = {"ar": 2545, "de": 2362, "en": 6264, "es": 1787, "hi": 2426, "vi": 2828, "zh": 2322}


def test_xquad_r_counts_match_the_dataset_readme():
    d = load_lareqa("xquad-r")
    assert d.questions.groupby("lang").size().to_dict() == {lang: 1190 for lang in XQUAD_CANDIDATES}
    assert d.candidates.groupby("lang").size().to_dict() == XQUAD_CANDIDATES
    assert len(d.candidates) == 13014
    # every id is 11-way parallel and every answer is a sentence of the question's language
    assert (d.questions.groupby("id").size() == 11).all()
    assert (d.candidates.loc[d.questions["candidate"], "lang"].to_numpy() == d.questions["lang"].to_numpy()).all()


def test_mlqa_r_counts_match_the_dataset_readme():
    d = load_lareqa("mlqa-r")
    assert d.questions.groupby("lang").size().to_dict() == MLQA_QUESTIONS
    assert d.candidates.groupby("lang").size().to_dict() == MLQA_CANDIDATES
    assert d.questions.groupby("id").size().between(2, 4).all()


def test_answer_sentence_contains_the_answer():
    d = load_lareqa("xquad-r", languages=["en"])
    raw = json.loads(data.fetch_lareqa("xquad-r", ["en"])["en"].read_text())
    answers = {qa["id"]: qa["answers"][0]["text"]
               for art in raw["data"] for par in art["paragraphs"] for qa in par["qas"]}
    sentences = d.candidates.loc[d.questions["candidate"], "text"].to_numpy()
    hits = sum(answers[qid] in sentence for qid, sentence in zip(d.questions["id"], sentences))
    assert hits / len(d.questions) > 0.97  # the rest spans a sentence break


def test_max_ids_keeps_whole_paragraphs_in_every_language():
    full = load_lareqa("xquad-r", languages=["en", "de", "th"])
    small = load_lareqa("xquad-r", languages=["en", "de", "th"], max_ids=25)
    assert small.questions["id"].nunique() == 25 and len(small.questions) == 75
    # the renumbered answer rows point at the same sentences as in the full data
    merged = small.questions.merge(full.questions, on=["lang", "id"], suffixes=("_s", "_f"))
    assert (small.candidates.loc[merged["candidate_s"], "text"].to_numpy()
            == full.candidates.loc[merged["candidate_f"], "text"].to_numpy()).all()
    kept = set(small.candidates["paragraph"])
    assert len(small.candidates) == full.candidates["paragraph"].isin(kept).sum()


def _write_fixture(folder):
    """Two paragraphs in three languages, LAReQA format (sentences + sentence_breaks)."""
    texts = {"en": ["Paris is big.", "It has a river.", "Cats sleep."],
             "de": ["Paris ist groß.", "Es hat einen Fluss.", "Katzen schlafen."],
             "fr": ["Paris est grand.", "Il a une rivière.", "Les chats dorment."]}
    for lang, (s1, s2, s3) in texts.items():
        context = f"{s1} {s2}"
        doc = {"data": [{"title": "t", "paragraphs": [
            {"context": context, "sentences": [s1, s2],
             "sentence_breaks": [[0, len(s1)], [len(s1) + 1, len(context)]],
             "qas": [{"id": "q1", "question": f"{lang}: river?",
                      "answers": [{"text": s2[:3], "answer_start": len(s1) + 1}]},
                     {"id": "q2", "question": f"{lang}: big?", "answers": [{"text": s1[:3], "answer_start": 0}]}]},
            {"context": s3, "sentences": [s3], "sentence_breaks": [[0, len(s3)]],
             "qas": [{"id": "q3", "question": f"{lang}: cats?", "answers": [{"text": s3, "answer_start": 0}]}]},
        ]}]}
        (folder / f"{lang}.json").write_text(json.dumps(doc), encoding="utf-8")
    return texts


def test_training_pairs_on_a_fixture(tmp_path):
    texts = _write_fixture(tmp_path)
    questions, candidates = [], []
    for lang in texts:
        data._parse_language(tmp_path / f"{lang}.json", lang, questions, candidates)
    import pandas as pd
    d = data.LaReQA("fixture", pd.DataFrame(questions, columns=["lang", "id", "text", "candidate"]),
                    pd.DataFrame(candidates, columns=["lang", "text", "paragraph", "context"]))
    pairs = build_training_pairs(d, hard_negatives=3)
    assert len(pairs) == 9 and sorted(pairs["id"].unique()) == ["q1", "q2", "q3"]
    row = pairs[(pairs["id"] == "q1") & (pairs["lang"] == "de")].iloc[0]
    assert row["query"] == "de: river?" and row["positive"] == "Es hat einen Fluss."
    assert row["negatives"] == ["Paris ist groß."]  # the other sentence of the same paragraph
    lonely = pairs[pairs["id"] == "q3"]
    assert all(neg == [] for neg in lonely["negatives"])  # a one-sentence paragraph has no hard negative
    small = subset_ids(d, ["q3"])
    assert len(small.candidates) == 3
    assert small.candidates.loc[small.questions["candidate"], "text"].str.contains("at").all()


@pytest.fixture
def shared_data() -> Path:
    """The local mirror of the benchmark files (CI: ../shared/data)."""
    return Path(os.environ["HYBRIDLIB_MIRROR"])


SHA = data.LAREQA_SHA256["xquad-r/en.json"]
URL = "http://127.0.0.1:9/not-there/en.json"  # a closed local port: fails at once, no network


def test_mirror_is_used_and_verified(tmp_path, monkeypatch):
    assert fetch_file("lareqa/xquad-r/en.json", URL, SHA).name == "en.json"  # from HYBRIDLIB_MIRROR
    bad = tmp_path / "lareqa" / "xquad-r"
    bad.mkdir(parents=True)
    (bad / "en.json").write_text("{}")
    monkeypatch.setenv("HYBRIDLIB_MIRROR", str(tmp_path))
    with pytest.raises(DataError, match="does not match"):
        fetch_file("lareqa/xquad-r/en.json", URL, SHA)


def test_missing_file_names_file_url_and_mirror(tmp_path, monkeypatch):
    monkeypatch.setenv("HYBRIDLIB_MIRROR", str(tmp_path / "empty"))
    monkeypatch.setenv("HYBRIDLIB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DataError) as error:
        fetch_file("lareqa/xquad-r/en.json", URL, SHA)
    message = str(error.value)
    assert "lareqa/xquad-r/en.json" in message and URL in message and "HYBRIDLIB_MIRROR" in message


def test_bad_cached_file_is_not_used_nor_kept(tmp_path, monkeypatch):
    monkeypatch.delenv("HYBRIDLIB_MIRROR")
    monkeypatch.setenv("HYBRIDLIB_CACHE", str(tmp_path))
    cached = tmp_path / "data" / "lareqa" / "xquad-r" / "en.json"
    cached.parent.mkdir(parents=True)
    cached.write_text("corrupt")
    with pytest.raises(DataError):
        fetch_file("lareqa/xquad-r/en.json", URL, SHA)
    assert not cached.exists()


def test_download_with_a_wrong_checksum_keeps_nothing(tmp_path, monkeypatch, shared_data):
    monkeypatch.delenv("HYBRIDLIB_MIRROR")
    monkeypatch.setenv("HYBRIDLIB_CACHE", str(tmp_path))
    source = shared_data / "lareqa" / "xquad-r" / "de.json"  # served by file:// URL, wrong content
    with pytest.raises(DataError, match="does not match"):
        fetch_file("lareqa/xquad-r/en.json", source.as_uri(), SHA)
    assert not list(tmp_path.rglob("*.json")) and not list(tmp_path.rglob("*.part"))
    good = shared_data / "lareqa" / "xquad-r" / "en.json"
    assert fetch_file("lareqa/xquad-r/en.json", good.as_uri(), SHA).read_bytes() == good.read_bytes()


def test_truncated_json_names_the_file(tmp_path, monkeypatch, shared_data):
    target = tmp_path / "lareqa" / "xquad-r"
    target.mkdir(parents=True)
    whole = (shared_data / "lareqa" / "xquad-r" / "en.json").read_bytes()
    (target / "en.json").write_bytes(whole[: len(whole) // 2])
    monkeypatch.setitem(data.LAREQA_SHA256, "xquad-r/en.json", data.sha256_of(target / "en.json"))
    monkeypatch.setenv("HYBRIDLIB_MIRROR", str(tmp_path))
    with pytest.raises(DataError, match="en.json: not a valid LAReQA JSON"):
        load_lareqa("xquad-r", languages=["en"])


def test_unknown_dataset_and_language():
    with pytest.raises(DataError, match="unknown LAReQA dataset"):
        load_lareqa("squad")
    with pytest.raises(DataError, match="no language 'el'"):
        load_lareqa("mlqa-r", languages=["el"])


def test_sample_paragraphs_draws_whole_paragraphs_from_every_article():
    from hybridlib.data import paragraph_clusters, sample_paragraphs

    full = load_lareqa("xquad-r", languages=["en", "de"])
    clusters = paragraph_clusters(full)
    articles = clusters.str.rsplit("/", n=1).str[0]
    sample = sample_paragraphs(full, 400, seed=0)
    kept = sample.questions["id"].unique()
    largest = clusters.value_counts().max()
    assert 400 <= len(kept) < 400 + largest  # stops at the paragraph that reaches 400 ids
    drawn = set(clusters[kept])
    assert set(clusters.index[clusters.isin(drawn)]) == set(kept)  # whole paragraphs: every question kept
    assert set(articles[kept]) == set(articles)  # 400 of 1,190 ids: every one of the 48 articles is drawn
    assert set(sample.questions["lang"]) == {"en", "de"}
    again, other = sample_paragraphs(full, 400, seed=0), sample_paragraphs(full, 400, seed=1)
    assert again.questions.equals(sample.questions) and not other.questions.equals(sample.questions)
