"""Nearest-neighbour search over a LAReQA pool with faiss: what a model returns for one question.

The study's numbers rank every candidate of a pool (full depth, ``hybridlib.metrics``); this
package shows the top of that ranking, to *see* language bias: a biased model fills the top 10
of a question with sentences in the question's own language, a language-agnostic one returns
the answer in many languages.

- ``index``: ``build_index`` (a faiss index of a pool, exact ``IndexFlatIP`` by default, cached
  next to the embeddings), ``search`` (tidy top-k table), ``top_k`` (any two embedding
  matrices, for the BEIR path), ``question_rank_distances``, ``own_language_share``;
- ``explore``: a run's models (``run_model``), notebook 06's side-by-side table and
  own-language figure, and ``search_cli`` (``hybridlib search``).

>>> from hybridlib.data import load_lareqa
>>> from hybridlib.models import DualEncoder
>>> encoder, data = DualEncoder("default"), load_lareqa("xquad-r", max_ids=30)  # doctest: +SKIP
>>> search(encoder, build_index(encoder, data), "Wer war Martin Luther?", k=5)    # doctest: +SKIP
"""
from .explore import (
    RunModel,
    StoredEncoder,
    format_results,
    language_colours,
    own_language_figure,
    own_language_shares,
    pick_question,
    pool_indexes,
    rank_distances,
    run_model,
    run_models,
    search_cli,
    side_by_side,
    style_side_by_side,
    top_lists,
    write_encoder_record,
)
from .index import (
    INDEX_TYPES,
    SEARCH_COLUMNS,
    PoolIndex,
    SearchError,
    build_index,
    make_index,
    own_language_share,
    question_rank_distances,
    search,
    top_k,
)

__all__ = ["INDEX_TYPES", "SEARCH_COLUMNS", "PoolIndex", "RunModel", "SearchError", "StoredEncoder", "build_index",
           "format_results", "language_colours", "make_index", "own_language_figure", "own_language_share",
           "own_language_shares", "pick_question", "pool_indexes", "question_rank_distances", "rank_distances",
           "run_model", "run_models", "search", "search_cli", "side_by_side", "style_side_by_side", "top_k",
           "top_lists", "write_encoder_record"]
