"""Languages seen and unseen in training: labels on the per-query frame, and intervals per label.

Example (issue 7, item 3): training on MLQA-R and evaluating on XQuAD-R leaves el, ru, th and
tr unseen in fine-tuning; ``unseen_language_split`` gives the macro averages and intervals of
the seen and the unseen cells separately. ``pair_group_split`` (issue 17) splits the cross-lingual
pairs finer, by how many of their two languages were seen: with MLQA-R's 7 languages and hi, vi
unseen, 20 ordered pairs are seen ↔ seen, 20 seen ↔ unseen and 2 (hi → vi, vi → hi) unseen ↔ unseen.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from ..constants import CROSS, SETTINGS
from .frame import StatsError, check_frame
from .resampling import bootstrap_ci


def label_seen_languages(per_query: pd.DataFrame, train_languages: Sequence[str],
                         column: str = "languages") -> pd.DataFrame:
    """A copy of ``per_query`` with a ``column`` saying whether a row's languages were seen in training.

    Monolingual and multilingual rows: ``seen`` / ``unseen`` by the query language (the pool of a
    multilingual query holds every language). Cross-lingual rows: ``both seen`` when the query
    and the pool language were both trained on, else ``query or pool unseen``.
    """
    check_frame(per_query, ())
    unknown = sorted(set(per_query["setting"]) - set(SETTINGS))
    if unknown:
        raise StatsError(f"unknown setting(s) {', '.join(map(str, unknown))} (expected {', '.join(SETTINGS)})")
    seen_query = per_query["query_lang"].isin(train_languages).to_numpy()
    seen_pool = per_query["pool_lang"].isin(train_languages).to_numpy()
    cross = (per_query["setting"] == CROSS).to_numpy()
    labels = np.where(cross, np.where(seen_query & seen_pool, "both seen", "query or pool unseen"),
                      np.where(seen_query, "seen", "unseen"))
    return per_query.assign(**{column: labels})


def unseen_language_split(per_query: pd.DataFrame, train_languages: Sequence[str], **bootstrap) -> pd.DataFrame:
    """Macro means with bootstrap intervals over the cells whose languages were seen / unseen in training.

    The split labels are those of ``label_seen_languages``; each split is macro-averaged over its
    own cells and resampled as in ``bootstrap_ci`` (``**bootstrap``, e.g. ``clusters`` and
    ``bootstrap_samples``, is passed to it). Returns ``bootstrap_ci``'s columns plus ``languages``.
    """
    if isinstance(train_languages, str) or not len(train_languages):
        raise StatsError(f"train_languages must be a non-empty list of language codes, got {train_languages!r}")
    return bootstrap_ci(label_seen_languages(per_query, train_languages), by=["languages"], **bootstrap)


# Cross-lingual language pairs by whether their two languages were trained on (issue 17, item 1).
SEEN_SEEN, SEEN_UNSEEN, UNSEEN_UNSEEN = "seen ↔ seen", "seen ↔ unseen", "unseen ↔ unseen"
PAIR_GROUPS = (SEEN_SEEN, SEEN_UNSEEN, UNSEEN_UNSEEN)


def label_pair_groups(per_query: pd.DataFrame, train_languages: Sequence[str],
                      column: str = "pair_group") -> pd.DataFrame:
    """The cross-lingual rows of ``per_query`` with a ``column`` naming their pair group.

    ``seen ↔ seen``: query and pool language both trained on; ``seen ↔ unseen``: one of them
    (either direction); ``unseen ↔ unseen``: neither. Monolingual and multilingual rows are left out.
    """
    check_frame(per_query, ())
    cross = per_query[per_query["setting"] == CROSS]
    seen = cross["query_lang"].isin(train_languages).to_numpy().astype(int) + \
        cross["pool_lang"].isin(train_languages).to_numpy().astype(int)
    return cross.assign(**{column: np.asarray(PAIR_GROUPS, dtype=object)[2 - seen]})


def pair_group_split(per_query: pd.DataFrame, train_languages: Sequence[str], **bootstrap) -> pd.DataFrame:
    """Cross-lingual macro means with bootstrap intervals per pair group (``label_pair_groups``).

    Each group is macro-averaged over its own ordered language pairs (``n_cells`` counts them) and
    resampled as in ``bootstrap_ci`` (``**bootstrap``: ``clusters``, ``bootstrap_samples``, ...).
    Returns ``bootstrap_ci``'s columns plus ``pair_group``;
    a group without pairs (e.g. every language seen) has no rows.
    """
    if isinstance(train_languages, str) or not len(train_languages):
        raise StatsError(f"train_languages must be a non-empty list of language codes, got {train_languages!r}")
    labelled = label_pair_groups(per_query, train_languages)
    if labelled.empty:
        raise StatsError("no cross-lingual rows: pair groups need the crosslingual setting")
    return bootstrap_ci(labelled, by=["pair_group"], **bootstrap)
