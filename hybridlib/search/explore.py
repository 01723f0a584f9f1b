"""Looking at what a model retrieves: the models of a run, notebook 06's views, ``hybridlib search``.

- ``run_model`` / ``run_models``: a run's zero-shot or trained model, from its kept weights or,
  without them, from the embeddings the run stored (``StoredEncoder``);
- ``side_by_side`` / ``style_side_by_side``: two models' top 10 for one question, each hit
  coloured by its language, the relevant answers framed;
- ``own_language_figure``: the share of the top k in the query's own language per query
  language and model (``index.own_language_share``);
- ``search_cli`` / ``format_results``: the ``hybridlib search`` command.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from ..config import DATASET_LANGUAGES
from ..constants import ALL, ZERO_SHOT
from ..evaluate import model_fingerprint
from ..io import write_json
from .index import Cache, SearchError, build_index, own_language_share, question_rank_distances, search

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------- models of a run
class StoredEncoder:
    """A model of a run known by its embeddings only (its weights were not kept).

    It has the attributes ``encode_texts`` keys its cache by (the settings and weight
    fingerprint recorded by ``write_encoder_record``), so the embeddings the run stored are
    found; it cannot embed new text.
    """

    def __init__(self, record: dict):
        self.name, self.fingerprint = record["name"], record["fingerprint"]
        self.prefixes, self.max_length = dict(record["prefixes"]), record["max_length"]
        self.pooling, self.precision = record["pooling"], record["precision"]

    def encode(self, texts, kind, **_):
        """Always a ``SearchError``: only the embeddings the run stored exist, and ``texts`` are not among them."""
        raise SearchError(f"{self.name}: its weights were not kept (keep_models: false) and the run stored no "
                          f"embeddings of these {len(texts)} {kind} texts; search a dataset question "
                          f"(<lang>:<id>) of the run's own pools")


def write_encoder_record(encoder, path) -> Path:
    """Record what ``StoredEncoder`` needs to find an encoder's cached embeddings (JSON at ``path``)."""
    record = {"name": str(getattr(encoder, "name", "")), "fingerprint": model_fingerprint(encoder),
              "prefixes": getattr(encoder, "prefixes", None) or {}, "max_length": getattr(encoder, "max_length", None),
              "pooling": getattr(encoder, "pooling", None), "precision": getattr(encoder, "precision", None)}
    return write_json(record, path)


def _hashed_once(encoder):
    """Pin the encoder's weight fingerprint (its weights stay as they are here): every cache look-up
    would hash them again (``evaluate.model_fingerprint``, ~0.6 s for the default encoder)."""
    encoder.fingerprint = model_fingerprint(encoder)
    return encoder


@dataclass(frozen=True)
class RunModel:
    """A model of a run, ready to search: its label, an encoder and the embedding cache to use."""

    label: str
    encoder: object
    cache: Cache


def run_model(params, run_dir, name: str) -> RunModel:
    """Model ``name`` of a run: ``zero-shot``, ``<label>-seed<k>``, or a training run's label (first seed).

    A trained model is loaded from ``models/<tag>/`` (``keep_models``), else found by the
    embeddings the run stored in ``embeddings/`` (``embeddings/<tag>.json``, see
    ``write_encoder_record``); ``SearchError`` when the run has neither. Trained models use the
    run's ``embeddings/`` as their cache, the zero-shot model the shared one (as 03_evaluate does).
    """
    from ..models import DualEncoder
    from ..study import model_tag, training_labels

    if name == ZERO_SHOT:
        return RunModel(ZERO_SHOT, _hashed_once(DualEncoder.from_params(params)), True)
    tag = model_tag(name, params.seeds[0]) if name in training_labels(params) else name
    run_dir = Path(run_dir)
    if (run_dir / "models" / tag).is_dir():
        folder = str(run_dir / "models" / tag)
        encoder = _hashed_once(DualEncoder.from_params(params, name_or_path=folder))
        return RunModel(tag, encoder, run_dir / "embeddings")
    record = run_dir / "embeddings" / f"{tag}.json"
    if record.is_file():
        encoder = StoredEncoder(json.loads(record.read_text(encoding="utf-8")))
        return RunModel(tag, encoder, run_dir / "embeddings")
    raise SearchError(f"{run_dir}: no model {tag!r} (neither models/{tag}/ nor embeddings/{tag}.json); "
                      f"a run keeps its weights with keep_models: true")


def run_models(params, run_dir, names: Sequence[str]) -> list[RunModel]:
    """``run_model`` of each name; names the run cannot provide are left out with a warning (at least one)."""
    models = []
    for name in names:
        try:
            models.append(run_model(params, run_dir, name))
        except SearchError as error:
            log.warning("%s: left out (%s)", name, error)
    if not models:
        raise SearchError(f"none of the models {', '.join(names)} is available in {run_dir}")
    return models


# ---------------------------------------------------------------------------------- notebook views
def pool_indexes(models: Sequence[RunModel], data, candidate_context: bool = False) -> dict:
    """The exact index of the multilingual pool of ``data`` for each model (label -> ``PoolIndex``)."""
    return {m.label: build_index(m.encoder, data, ALL, cache=m.cache, candidate_context=candidate_context,
                                 progress=False) for m in models}


def pick_question(data, question_id: str = "", question_lang: str = "en", query_text: str = "") -> str:
    """The question to search for: ``query_text`` if given (any language), else the dataset question
    ``<question_lang>:<question_id>`` (``question_id`` empty: the first question of that language in
    the pool). ``SearchError`` when the pool lacks the language or the question (a study with
    ``eval_max_ids`` evaluates on a sample of paragraphs)."""
    if str(query_text).strip():
        return str(query_text).strip()
    asked = data.questions[data.questions["lang"] == question_lang]
    if asked.empty:
        raise SearchError(f"the {data.name} pool has no questions in {question_lang!r} "
                          f"(it has {', '.join(data.languages)})")
    if not question_id:
        return f"{question_lang}:{asked['id'].iloc[0]}"
    if question_id not in set(asked["id"]):
        raise SearchError(f"question {question_id!r} is not in this run's {data.name} pool in {question_lang} "
                          f"(e.g. {', '.join(asked['id'].iloc[:3])}; empty: the first one)")
    return f"{question_lang}:{question_id}"


def _is_dataset_question(data, question: str) -> bool:
    return question in set(data.questions["lang"] + ":" + data.questions["id"])


def top_lists(models: Sequence[RunModel], indexes: dict, question: str, k: int = 10) -> dict:
    """Each model's top ``k`` (``search``) for one question: label -> table. For free text, models
    known by stored embeddings only (``StoredEncoder``) are left out with a warning."""
    data = next(iter(indexes.values())).data
    usable = [m for m in models if _is_dataset_question(data, question) or not isinstance(m.encoder, StoredEncoder)]
    for left_out in sorted({m.label for m in models} - {m.label for m in usable}):
        log.warning("%s: left out (its weights were not kept, so it cannot embed new text)", left_out)
    if not usable:
        raise SearchError("no model of this run can embed new text; search a dataset question (<lang>:<id>)")
    return {m.label: search(m.encoder, indexes[m.label], question, k, cache=m.cache) for m in usable}


def rank_distances(models: Sequence[RunModel], indexes: dict, question: str) -> pd.DataFrame:
    """The rank distance of a dataset question for each model (``question_rank_distances``), one row
    per model; empty for free text (it has no known answers)."""
    data = next(iter(indexes.values())).data
    if not _is_dataset_question(data, question):
        return pd.DataFrame(columns=["model", "rank_distance"])
    rows = [(m.label, float(question_rank_distances(m.encoder, indexes[m.label], question, cache=m.cache)
                            ["rank_distance"].iloc[0])) for m in models]
    return pd.DataFrame(rows, columns=["model", "rank_distance"])


def own_language_shares(models: Sequence[RunModel], indexes: dict, k: int = 10) -> pd.DataFrame:
    """``own_language_share`` of every dataset question for each model, with a ``model`` column."""
    return pd.concat([own_language_share(m.encoder, indexes[m.label], k, cache=m.cache).assign(model=m.label)
                      for m in models], ignore_index=True)


def side_by_side(results: dict) -> pd.DataFrame:
    """Top-k tables of one question (``search`` outputs, label -> table) side by side.

    Index ``rank``; columns (label, ``lang`` / ``score`` / ``relevant`` / ``candidate``).
    """
    blocks = {}
    for label, table in results.items():
        block = table.set_index("rank")[["candidate_lang", "score", "relevant", "candidate_text"]]
        blocks[label] = block.set_axis(["lang", "score", "relevant", "candidate"], axis=1)
    return pd.concat(blocks, axis=1)


def language_colours(languages: Sequence[str]) -> dict:
    """A light background colour (hex) per language, fixed by the sorted language list."""
    import seaborn as sns

    languages = sorted(set(languages))
    palette = sns.color_palette("pastel", 10) + sns.color_palette("Set3", 12)
    return {lang: "#%02x%02x%02x" % tuple(int(255 * c) for c in palette[i % len(palette)])
            for i, lang in enumerate(languages)}


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


def style_side_by_side(table: pd.DataFrame, languages: Sequence[str], query_lang: Optional[str] = None):
    """``side_by_side`` as a pandas Styler: each hit coloured by its language, relevant answers bold
    and framed, the colours of the languages (and the query's own language) in the caption."""
    colours = language_colours(languages)

    def css(frame: pd.DataFrame) -> pd.DataFrame:
        styles = pd.DataFrame("", index=frame.index, columns=frame.columns)
        for label in frame.columns.get_level_values(0).unique():
            relevant = frame[(label, "relevant")].fillna(False).astype(bool)
            cells = [f"background-color: {colours.get(lang, '#ffffff')}; color: black"
                     + ("; font-weight: bold; border: 2px solid #1b7837" if hit else "")
                     for lang, hit in zip(frame[(label, "lang")], relevant)]
            for field in frame[label].columns:
                styles[(label, field)] = cells
        return styles

    legend = " ".join(f'<span style="background-color: {colour}; color: black; padding: 0 4px">{lang}</span>'
                      for lang, colour in colours.items())
    own = f"query language: {query_lang}; " if query_lang else ""
    shown = {"score": "{:.3f}".format, "relevant": lambda hit: "✓" if not pd.isna(hit) and hit else "",
             "candidate": lambda text: _shorten(str(text), 90)}
    formats = {column: shown.get(column[1], "{}") for column in table.columns}
    return table.style.apply(css, axis=None).format(formats).set_caption(
        f"{own}relevant answers bold and framed; languages: {legend}")


def own_language_figure(shares: pd.DataFrame, k: int = 10, pool_languages: Optional[int] = None):
    """Bars of the mean own-language share of the top ``k`` per query language (x) and model (hue).

    ``shares``: ``own_language_shares`` (a ``model`` column of run tags); each model takes its
    strategy's colour (``plots.strategy_palette``). A dashed line marks 1/L, the share of the
    query's language in a pool of L languages of equal size.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    from ..plots import strategy_palette

    labels = list(dict.fromkeys(shares["model"]))
    strategies = {label: re.sub(r"-seed\d+$", "", label) for label in labels}
    colours = strategy_palette(strategies.values())
    fig, ax = plt.subplots(figsize=(3.2 + 0.9 * shares["query_lang"].nunique(), 3.2))
    sns.barplot(shares, x="query_lang", y="own_language_share", hue="model", hue_order=labels, errorbar=None,
                palette={label: colours[strategies[label]] for label in labels}, ax=ax)
    if pool_languages:
        ax.axhline(1 / pool_languages, color="black", linestyle="--", linewidth=1,
                   label=f"1/{pool_languages}: its share of the pool")
    ax.set(ylim=(0, 1), xlabel="query language", ylabel=f"own-language share of top {k}",
           title=f"Top {k} in the query's own language (multilingual pool)")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    fig.tight_layout()
    return fig


# -------------------------------------------------------------------------------------------- CLI
def search_cli(model: str, text: str, dataset: str = "xquad-r", lang: str = ALL, k: int = 10) -> pd.DataFrame:
    """``hybridlib search``: the top ``k`` candidates of a LAReQA pool for ``text`` with model ``model``.

    ``model``: ``default``, a model folder or a hub name (``models.DualEncoder``, precision
    ``auto``); ``text``: any text, or ``<lang>:<question id>`` for a dataset question; ``lang``:
    a language of ``dataset`` or ``all`` (the multilingual pool). Every input is checked before
    the model loads: an unknown model folder, an empty query, k outside 1..pool size, a
    language the dataset lacks raise ``SearchError`` (one line). The index is cached (``build_index``).
    """
    from ..data import load_lareqa
    from ..models import DualEncoder, ModelError, resolve_model

    if not str(text or "").strip():
        raise SearchError("empty query: give the text to search for")
    if dataset not in DATASET_LANGUAGES:
        raise SearchError(f"unknown dataset {dataset!r} (use {', '.join(DATASET_LANGUAGES)})")
    if lang != ALL and lang not in DATASET_LANGUAGES[dataset]:
        raise SearchError(f"{dataset} has no language {lang!r} (it has {', '.join(DATASET_LANGUAGES[dataset])}, "
                          f"or {ALL})")
    if k <= 0:
        raise SearchError(f"-k {k}: must be at least 1")
    data = load_lareqa(dataset)
    pool = len(data.candidates) if lang == ALL else int((data.candidates["lang"] == lang).sum())
    if k > pool:
        raise SearchError(f"-k {k}: larger than the pool ({pool} candidates of {dataset}, {lang})")
    try:
        resolve_model(model)
        encoder = _hashed_once(DualEncoder(model))
    except ModelError as error:
        raise SearchError(str(error)) from None
    return search(encoder, build_index(encoder, data, lang), text, k)


def format_results(table: pd.DataFrame, width: int = 100) -> str:
    """A ``search`` table as plain text for the terminal: rank, score, language, relevant (dataset
    questions only), the candidate (cut at ``width`` characters, left-aligned)."""
    candidates = table["candidate_text"].map(lambda text: _shorten(str(text), width))
    shown = pd.DataFrame({"rank": table["rank"], "score": table["score"].map("{:.3f}".format),
                          "lang": table["candidate_lang"],
                          "relevant": table["relevant"].map(lambda v: "" if v is pd.NA else "yes" if v else "no"),
                          "candidate": candidates.str.ljust(int(candidates.str.len().max() or 0))})
    if table["relevant"].isna().all():
        shown = shown.drop(columns="relevant")
    return shown.to_string(index=False, justify="left")
