"""The paper's four claims, and the study's DAPT questions, as comparisons of strategies judged from the paired tests.

A claim compares its strategy S with competitors C in some settings; each (setting, C) is one
*comparison*, read from one row of ``paired_tests`` output (either orientation). The claims
table has one row per comparison: our difference S - C with its interval, the paper's own
difference for the same comparison (XLM-R and LaBSE, ``hybridlib.paper``), whether our
interval includes the paper's size, and the outcome of the comparison; the claim's verdict
repeats on each of its rows. Words: ``VERDICTS``; the margin: ``MARGIN_REASON``.

``CLAIMS`` are the paper's; ``DAPT_CLAIMS`` ask what domain-adaptive pre-training (the strategies
``dapt`` and ``dapt+hybrid``) does: does DAPT alone beat the encoder as loaded, and does DAPT before
hybrid fine-tuning beat hybrid alone, per setting (monolingual, cross-lingual, multilingual mAP)
and in rank distance. Each is a superiority claim of one comparison (its own verdict), so
"contradicted" means DAPT made that number significantly worse. A DAPT claim is listed only for
a model and dataset whose paired tests compare its two strategies; the paper's claims are always
listed (``not tested`` where their strategies are missing).

Multiplicity: the p-values (of "no difference") are Holm-adjusted (Holm 1979) over every
distinct comparison of one *family* in the whole table, all its claims, models and datasets
together. The paper's claims are one family and the DAPT claims another, so that the paper's
claims come out exactly the same whether or not a study adds the DAPT strategies. A claim is
supported only when ALL its comparisons are (an intersection-union test, Berger 1982, which
needs no further adjustment); one contradicted comparison contradicts it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from ..constants import CROSS, DAPT, DAPT_HYBRID, MONO, MULTI, RANK_DISTANCE, SETTINGS, ZERO_SHOT, is_lower_better
from ..paper import PAPER_MODELS, paper_difference, smallest_claimed_gain
from .frame import StatsError

SUPERIORITY, NONINFERIORITY = "superiority", "non-inferiority"
NONINFERIORITY_MARGIN = smallest_claimed_gain()  # 0.003 mAP
MARGIN_REASON = (f"The non-inferiority margin is {NONINFERIORITY_MARGIN:g} mAP, the smallest non-zero gain the "
                 "paper reports for Hybrid over the stronger of X-X-mono and X-Y (e.g. LaBSE, multilingual "
                 "XQuAD-R: .682 against .679): a deficit smaller than the least gain the paper counts as an "
                 "improvement is a match.")
SUPPORTED, CONTRADICTED, INCONCLUSIVE, NOT_TESTED = "supported", "contradicted", "inconclusive", "not tested"
VERDICTS = {
    SUPPORTED: "the comparison of the claim's strategy S with a competitor C comes out as the claim says: for "
               "'better', S is better with a Holm-adjusted p below alpha (0.05); for 'matches or beats', the "
               "lower end of the 95% interval of S - C lies above minus the margin (even when S is "
               "significantly, but less than the margin, below C). A claim is supported when every one of its "
               "comparisons is.",
    CONTRADICTED: "the comparison goes against the claim: C is better than S with a Holm-adjusted p below alpha "
                  "(for 'matches or beats': better by more than the margin, the whole interval of S - C below "
                  "minus the margin). One contradicted comparison contradicts the claim.",
    INCONCLUSIVE: "neither: with these questions and these runs the data do not decide the comparison.",
    NOT_TESTED: "the comparison is missing from the paired tests (a strategy, setting or metric was not "
                "evaluated); a claim with a missing comparison and none contradicted is not tested.",
}
_PAPER = {model: model.lower().replace("-", "") for model in PAPER_MODELS}  # XLM-R -> xlmr
CLAIM_COLUMNS = ["model", "eval_dataset", "claim", "verdict", "setting", "metric", "strategy_a", "strategy_b",
                 "mean_diff", "ci_low", "ci_high", "p_value", "p_holm", "outcome",
                 *[f"paper_{s}" for s in _PAPER.values()], *[f"{s}_in_ci" for s in _PAPER.values()],
                 "n_queries", "n_clusters", "n_runs_a", "n_runs_b", "resampling_unit"]
_NEEDED = ["eval_dataset", "setting", "metric", "strategy_a", "strategy_b", "mean_diff", "ci_low", "ci_high",
           "p_value"]


@dataclass(frozen=True)
class Claim:
    """One of the paper's claims: ``strategy`` against each of ``competitors`` in each of ``settings``.

    kind ``superiority``: ``strategy`` is better than every competitor (higher mAP, lower rank
    distance). kind ``non-inferiority``: ``strategy`` is nowhere worse by more than the margin.
    ``family``: the Holm family of its comparisons. ``always_listed``: False lists the claim only
    for a model and dataset whose paired tests compare all its strategies.
    """
    name: str
    kind: str
    strategy: str
    competitors: tuple[str, ...]
    settings: tuple[str, ...]
    metric: str
    family: str = "paper"
    always_listed: bool = True


CLAIMS = (
    Claim("X-X-mono is best monolingually", SUPERIORITY, "x-x-mono", ("x-y", "hybrid"), (MONO,), "mAP"),
    Claim("X-Y is best cross-lingually", SUPERIORITY, "x-y", ("x-x-mono", "hybrid"), (CROSS,), "mAP"),
    Claim("Hybrid matches or beats X-X-mono and X-Y everywhere", NONINFERIORITY, "hybrid", ("x-x-mono", "x-y"),
          SETTINGS, "mAP"),
    Claim("Hybrid lowers the rank distance relative to X-X-mono", SUPERIORITY, "hybrid", ("x-x-mono",), (MULTI,),
          RANK_DISTANCE),
)
_SETTING_WORDS = {MONO: "monolingual", CROSS: "cross-lingual", MULTI: "multilingual"}


def _dapt_claims(strategy: str, competitor: str, subject: str, other: str) -> tuple[Claim, ...]:
    """The four DAPT questions for ``strategy`` against ``competitor``: mAP per setting, rank distance."""
    claims = [Claim(f"{subject} raises {_SETTING_WORDS[setting]} mAP over {other}", SUPERIORITY, strategy,
                    (competitor,), (setting,), "mAP", family="dapt", always_listed=False) for setting in SETTINGS]
    claims.append(Claim(f"{subject} lowers the rank distance relative to {other}", SUPERIORITY, strategy,
                        (competitor,), (MULTI,), RANK_DISTANCE, family="dapt", always_listed=False))
    return tuple(claims)


DAPT_CLAIMS = (_dapt_claims(DAPT, ZERO_SHOT, "DAPT", "zero-shot")
               + _dapt_claims(DAPT_HYBRID, "hybrid", "DAPT before hybrid", "hybrid alone"))


def holm(p_values: np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment (Holm 1979) of a family of p-values."""
    order = np.argsort(p_values)
    steps = (len(p_values) - np.arange(len(p_values))) * p_values[order]
    adjusted = np.empty(len(p_values))
    adjusted[order] = np.minimum(np.maximum.accumulate(steps), 1.0)
    return adjusted


def _comparison(tests: pd.DataFrame, x: str, y: str, setting: str, metric: str) -> dict:
    """The statistics of x - y from ``tests`` (one model and dataset), turned around if tested as y - x."""
    rows = tests[(tests["setting"] == setting) & (tests["metric"] == metric)]
    for a, b, sign in ((x, y, 1.0), (y, x, -1.0)):
        found = rows[(rows["strategy_a"] == a) & (rows["strategy_b"] == b)]
        if len(found) > 1:
            raise StatsError(f"significance frame has {len(found)} rows for {a} vs {b}, {setting} {metric}")
        if len(found) == 1:
            row = found.iloc[0]
            low, high = sorted((sign * row["ci_low"], sign * row["ci_high"]))
            runs = {a: row.get("n_runs_a", np.nan), b: row.get("n_runs_b", np.nan)}
            return dict(mean_diff=sign * row["mean_diff"], ci_low=low, ci_high=high, p_value=float(row["p_value"]),
                        n_queries=row.get("n_queries", np.nan), n_clusters=row.get("n_clusters", np.nan),
                        n_runs_a=runs[x], n_runs_b=runs[y], resampling_unit=row.get("resampling_unit", ""))
    return {}


def _paper_columns(dataset: str, setting: str, metric: str, x: str, y: str, low: float, high: float,
                   pool_sizes: Optional[Mapping[str, int]]) -> dict:
    """The paper's x - y for each paper model, and whether [low, high] includes it (NA: not comparable)."""
    pool = (pool_sizes or {}).get(dataset)
    out = {}
    for model, slug in _PAPER.items():
        size = paper_difference(model, dataset, setting, metric, x, y, pool_size=pool)
        comparable = size is not None and not np.isnan(low) and (metric != RANK_DISTANCE or pool is not None)
        out[f"paper_{slug}"] = np.nan if size is None else size
        out[f"{slug}_in_ci"] = bool(low <= size <= high) if comparable else pd.NA
    return out


def _outcome(kind: str, row: pd.Series, alpha: float, margin: float) -> str:
    """The outcome word of one comparison (see ``VERDICTS``)."""
    if np.isnan(row["mean_diff"]):
        return NOT_TESTED
    direction = -1.0 if is_lower_better(row["metric"]) else 1.0  # gains > 0 favour the claim's strategy
    gain, low, high = (direction * row[c] for c in ("mean_diff", "ci_low", "ci_high"))
    low, high = min(low, high), max(low, high)
    significant = row["p_holm"] < alpha
    if kind == NONINFERIORITY:
        return SUPPORTED if low > -margin else CONTRADICTED if high < -margin and significant else INCONCLUSIVE
    return (SUPPORTED if gain > 0 else CONTRADICTED if gain < 0 else INCONCLUSIVE) if significant else INCONCLUSIVE


def _verdict(outcomes: pd.Series) -> str:
    """A claim's verdict from its comparisons' outcomes."""
    found = set(outcomes)
    for word in (CONTRADICTED, NOT_TESTED):
        if word in found:
            return word
    return SUPPORTED if found == {SUPPORTED} else INCONCLUSIVE


def _adjust(table: pd.DataFrame) -> np.ndarray:
    """Holm-adjusted p-values over the distinct comparisons of each family in the whole table
    (a - b and b - a are one)."""
    hypothesis = [(f, m, d, s, k, frozenset((a, b))) for f, m, d, s, k, a, b in
                  table[["_family", "model", "eval_dataset", "setting", "metric", "strategy_a",
                         "strategy_b"]].itertuples(index=False)]
    adjusted = {}
    for family in dict.fromkeys(table["_family"]):
        tested = {h: p for h, p in zip(hypothesis, table["p_value"]) if h[0] == family and not np.isnan(p)}
        if tested:
            adjusted.update(zip(tested, holm(np.array(list(tested.values()), dtype=float))))
    return np.array([adjusted.get(h, np.nan) for h in hypothesis])


def _check(significance: pd.DataFrame, alpha: float, margin: float) -> None:
    missing = [c for c in _NEEDED if c not in significance.columns]
    if missing and not significance.empty:
        raise StatsError(f"significance frame lacks column(s) {', '.join(missing)} (use paired_tests output)")
    if not 0.0 < alpha < 1.0 or margin < 0:
        raise StatsError(f"alpha must be in (0, 1) and margin >= 0, got alpha={alpha}, margin={margin}")


def claim_verdicts(significance: pd.DataFrame, *, alpha: float = 0.05, margin: float = NONINFERIORITY_MARGIN,
                   claims: Sequence[Claim] = CLAIMS + DAPT_CLAIMS,
                   pool_sizes: Optional[Mapping[str, int]] = None) -> pd.DataFrame:
    """The claims table: every comparison of every claim per (model, eval_dataset), from ``paired_tests`` output.

    Args:
        significance: ``paired_tests`` output (an empty frame gives every claim ``not tested``).
        alpha: level of the Holm-adjusted p-values.
        margin: non-inferiority margin in mAP (default ``NONINFERIORITY_MARGIN``, see ``MARGIN_REASON``).
            Non-inferiority is read off the interval of the significance table (95% by default: a
            one-sided 2.5% test per comparison).
        claims: the claims to judge (default the paper's four, ``CLAIMS``, then ``DAPT_CLAIMS``; a
            claim not ``always_listed`` only where the tests compare its strategies).
        pool_sizes: eval_dataset -> number of candidates of OUR multilingual pool. The paper's
            rank distances count positions in its full pools; with our pool size they are rescaled
            to the same fraction of our pool and compared with our interval, without it the
            ``*_in_ci`` of the rank distance stay empty (positions in pools of different sizes
            do not compare).

    The smallest p-value of ``paired_tests`` is 2 / (B + 1), so with m distinct comparisons in
    the family (9 per dataset for the paper's claims, 8 for the DAPT claims) no superiority can be
    supported unless 2 m / (B + 1) < alpha: B = 1000 serves up to 25 comparisons at alpha = 0.05.

    Returns a frame with ``CLAIM_COLUMNS``: ``mean_diff, ci_low, ci_high`` are ours for
    ``strategy_a - strategy_b`` (a = the claim's strategy), ``paper_xlmr``/``paper_labse`` the
    paper's difference for the same comparison (NaN where the paper has no such column),
    ``xlmr_in_ci``/``labse_in_ci`` whether our interval includes it, ``p_holm`` the Holm-adjusted
    p-value, ``outcome`` the comparison's word and ``verdict`` the claim's (``VERDICTS``).
    """
    _check(significance, alpha, margin)
    if significance.empty:
        tables = [(("", ""), significance)]
    else:
        if "model" not in significance.columns:
            significance = significance.assign(model="")
        tables = list(significance.groupby(["model", "eval_dataset"], sort=True))
    rows = []
    for (model, dataset), tests in tables:
        compared = set(tests["strategy_a"]) | set(tests["strategy_b"]) if len(tests) else set()
        for claim in claims:
            if not claim.always_listed and not {claim.strategy, *claim.competitors} <= compared:
                continue
            for setting in claim.settings:
                for other in claim.competitors:
                    found = _comparison(tests, claim.strategy, other, setting, claim.metric) if len(tests) else {}
                    low, high = found.get("ci_low", np.nan), found.get("ci_high", np.nan)
                    rows.append(dict(model=model, eval_dataset=dataset, claim=claim.name, setting=setting,
                                     metric=claim.metric, strategy_a=claim.strategy, strategy_b=other, **found,
                                     **_paper_columns(dataset, setting, claim.metric, claim.strategy, other, low, high,
                                                      pool_sizes), _kind=claim.kind, _family=claim.family))
    table = pd.DataFrame(rows).reindex(columns=[*CLAIM_COLUMNS, "_kind", "_family"])
    table[["mean_diff", "ci_low", "ci_high", "p_value"]] = table[["mean_diff", "ci_low", "ci_high",
                                                                  "p_value"]].astype(float)
    table["p_holm"] = _adjust(table)
    table["outcome"] = [_outcome(row["_kind"], row, alpha, margin) for _, row in table.iterrows()]
    table["verdict"] = table.groupby(["model", "eval_dataset", "claim"], sort=False)["outcome"].transform(_verdict)
    table["resampling_unit"] = table["resampling_unit"].astype(object).where(table["resampling_unit"].notna(), "")
    for column in ("n_queries", "n_clusters", "n_runs_a", "n_runs_b"):
        table[column] = table[column].astype("Int64")
    return table[CLAIM_COLUMNS]

