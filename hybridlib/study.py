"""The steps of a study on a run folder; each notebook calls a few of these.

Run folder (``runs/<run_name>/``, see docs/design.md):
``params.yaml`` (written by ``hybridlib run``), ``data/prepared.json`` (01), ``train_log/<tag>.csv``
and ``<tag>.val.csv`` (02), ``models/<tag>/`` (02, only with ``keep_models``),
``metrics/parts/<tag>.csv`` + ``<tag>.per_query.parquet`` (02 and 03, one per model),
``metrics/metrics.csv`` + ``per_query.parquet`` (03), ``metrics/rank_distance.csv`` (04),
``metrics/intervals.csv``, ``metrics/significance.csv``, ``metrics/claims.csv``, ``report.md`` (05),
``figures/`` (PNG + PDF); ``training/<tag>/`` only while a model trains (checkpoints to resume).
``<tag>`` is ``<strategy>-seed<k>`` (a strategy or a variant's name), or ``zero-shot``.
"""
from __future__ import annotations

import logging
import shutil
import warnings
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from .config import DATASET_LANGUAGES, StudyParams, load_params
from .constants import OWN_LANGUAGE, RANK_DISTANCE, RANK_DISTANCE_FRACTION, ZERO_SHOT
from .data import LaReQA, load_lareqa, paragraph_clusters, sample_paragraphs
from .errors import HybridlibError
from .io import write_json, write_table

log = logging.getLogger(__name__)

# MIRACL dev languages (Zhang et al. 2023): monolingual retrieval only.
MIRACL_LANGUAGES = ("ar", "bn", "de", "en", "es", "fa", "fi", "fr", "hi", "id", "ja", "ko", "ru", "sw", "te",
                    "th", "yo", "zh")
SIGNIFICANCE_METRICS = ("mAP", RANK_DISTANCE, RANK_DISTANCE_FRACTION, OWN_LANGUAGE)
# The parameters that shape a training run (shown by 02_train).
TRAINING_KEYS = ("model", "train_dataset", "train_languages", "train_max_ids", "validation_ids", "alpha",
                 "batch_size", "hard_negatives", "learning_rate", "weight_decay", "warmup_ratio", "temperature",
                 "max_steps", "eval_every", "early_stopping_patience", "freeze_embeddings", "precision", "device")


class StudyError(HybridlibError):
    """A step of the study cannot run on this run folder (e.g. an earlier step has not run)."""


def model_tag(strategy: str, seed: int) -> str:
    """Name of one model's results in the run folder: ``<strategy>-seed<k>``; ``zero-shot`` for the untrained model."""
    return ZERO_SHOT if strategy == ZERO_SHOT else f"{strategy}-seed{seed}"


def training_labels(params: StudyParams) -> list[str]:
    """The names of the study's training runs: the trained strategies, then the variants (``params.variants``)."""
    return [label for label, _, _ in params.training_runs()]


def expected_tags(params: StudyParams) -> list[str]:
    """The result parts a complete run has: ``zero-shot`` (if a strategy) and every training run x seed."""
    tags = [ZERO_SHOT] if ZERO_SHOT in params.strategies else []
    return tags + [model_tag(label, k) for label in training_labels(params) for k in params.seeds]


def load_run(params_path, run_dir) -> tuple[StudyParams, Path]:
    """The validated parameters of a run and its folder (created with its sub-folders if missing).

    Called first by every notebook. Progress bars in notebooks are tqdm's text bars: unlike
    widgets they survive in the executed copies papermill saves, so tqdm's warning that
    ipywidgets is missing is silenced.
    """
    warnings.filterwarnings("ignore", message="IProgress not found")
    params = load_params(params_path)
    run_dir = Path(run_dir)
    for sub in ("metrics/parts", "train_log", "figures", "data"):
        (run_dir / sub).mkdir(parents=True, exist_ok=True)
    return params, run_dir


def params_table(params: StudyParams, keys: Optional[Sequence[str]] = None) -> pd.DataFrame:
    """The parameters in force as a two-column table (all of them, or ``keys``), for display."""
    values = params.model_dump()
    keys = list(keys) if keys is not None else list(values)
    unknown = [k for k in keys if k not in values]
    if unknown:
        raise StudyError(f"unknown parameter(s) {', '.join(unknown)}")
    return pd.DataFrame({"parameter": keys, "value": [_show(values[k]) for k in keys]}).set_index("parameter")


def training_table(params: StudyParams, label: str) -> pd.DataFrame:
    """The settings of one training run (a strategy or a variant): its batch strategy and ``TRAINING_KEYS``."""
    strategy, run_params = params.for_run(label)
    table = params_table(run_params, TRAINING_KEYS)
    head = pd.DataFrame({"value": [label, strategy]}, index=pd.Index(["training run", "batches"], name="parameter"))
    return pd.concat([head, table])


def _show(value) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return "None" if value is None else str(value)


def train_languages(params: StudyParams) -> list[str]:
    """The languages the models are trained on: ``train_languages`` or every language of the LAReQA sources."""
    if params.train_languages:
        return list(params.train_languages)
    return sorted({l for s in params.train_sources for l in DATASET_LANGUAGES.get(s, ())})


def eval_languages(params: StudyParams, dataset: str) -> list[str]:
    """The evaluation languages of a dataset: ``eval_languages`` that it has, or all of them."""
    langs = DATASET_LANGUAGES[dataset]
    return [l for l in langs if l in params.eval_languages] if params.eval_languages else list(langs)


def load_eval_data(params: StudyParams, dataset: str) -> LaReQA:
    """The evaluation pools of one LAReQA dataset as the parameters restrict them: its
    ``eval_languages``, and with ``eval_max_ids`` a seeded random sample of whole paragraphs
    (``data.sample_paragraphs``, seed ``eval_sample_seed``)."""
    data = load_lareqa(dataset, eval_languages(params, dataset))
    return sample_paragraphs(data, params.eval_max_ids, params.eval_sample_seed) if params.eval_max_ids else data


def question_clusters(params: StudyParams, per_query: pd.DataFrame) -> pd.Series:
    """Query id -> cluster for the statistics: the paragraph of the answer on LAReQA
    (``data.paragraph_clusters``), each id alone elsewhere (MIRACL)."""
    parts = [paragraph_clusters(load_eval_data(params, d)) for d in lareqa_datasets(params)]
    clusters = pd.concat(parts) if parts else pd.Series(dtype=object, name="paragraph")
    others = pd.unique(per_query.loc[~per_query["query_id"].isin(clusters.index), "query_id"])
    return pd.concat([clusters, pd.Series(others, index=others, dtype=object)]).rename("paragraph")


# ------------------------------------------------------------------------------------ 01: prepare
def describe_model(params: StudyParams) -> pd.DataFrame:
    """Build (the default encoder) or locate the model, and describe it from its config: a one-column table."""
    from transformers import AutoConfig

    from .models import DEFAULT_MODEL_LABEL, resolve_model

    path = resolve_model(params.model)
    config = AutoConfig.from_pretrained(path)
    label = DEFAULT_MODEL_LABEL if params.model == "default" else params.model
    facts = {"model": label, "architecture": config.model_type, "layers": config.num_hidden_layers,
             "hidden size": config.hidden_size, "vocabulary": config.vocab_size, "pooling": params.pooling,
             "prefixes": f"{params.query_prefix!r} / {params.passage_prefix!r}", "folder": str(path)}
    return pd.DataFrame({"value": [str(v) for v in facts.values()]}, index=pd.Index(list(facts), name="model"))


def prepare(params: StudyParams, run_dir: Path) -> pd.DataFrame:
    """Fetch and verify (sha256) the data; return and record the sizes of training and evaluation data.

    Training rows count question ids per language after the validation hold-out (the same
    split as ``train.split_validation``); evaluation rows count questions and pool candidates.
    Writes ``data/prepared.json``, the marker that this step is done.
    """
    from .train import load_training_data, split_validation

    rows = []
    tables, held_out = split_validation(load_training_data(params), params.validation_ids)
    for source, table in zip(params.train_sources, tables):
        for lang, group in table.groupby("lang"):
            rows.append(("train", source, lang, group["id"].nunique(), None))
    if held_out is not None:
        for lang, group in held_out.groupby("lang"):
            rows.append(("validation", "+".join(params.train_sources), lang, group["id"].nunique(), None))
    for dataset in params.eval_datasets:
        if dataset in DATASET_LANGUAGES:
            data = load_eval_data(params, dataset)
            counts = data.candidates.groupby("lang").size()
            for lang, group in data.questions.groupby("lang"):
                rows.append(("evaluate", dataset, lang, len(group), int(counts.get(lang, 0))))
    sizes = pd.DataFrame(rows, columns=["role", "dataset", "lang", "questions", "candidates"])
    sizes["candidates"] = sizes["candidates"].astype("Int64")
    record = {"model": params.model, "sizes": sizes.astype(object).where(sizes.notna(), None).to_dict("records")}
    write_json(record, run_dir / "data" / "prepared.json")
    return sizes


# ------------------------------------------------------------------------------- 02/03: evaluate
def _miracl_metrics(encoder, params: StudyParams, strategy: str, seed: int, cache) -> tuple:
    """MIRACL dev of each evaluation language (``evaluate.evaluate_beir``) and their macro average
    (``evaluate.aggregate`` of the languages' per-query tables)."""
    from .evaluate import aggregate, evaluate_beir

    languages = [l for l in (params.eval_languages or MIRACL_LANGUAGES) if l in MIRACL_LANGUAGES]
    per_query = pd.concat([evaluate_beir(encoder, f"miracl:{lang}", model=encoder.name, strategy=strategy, seed=seed,
                                         language=lang, per_query=True, cache=cache)[1] for lang in languages],
                          ignore_index=True)
    return aggregate(per_query), per_query


def evaluate_encoder(encoder, params: StudyParams, strategy: str, seed: int,
                     cache=False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Metrics and per-query values of ``encoder`` on every ``eval_datasets`` (``evaluate.evaluate_lareqa``).

    The rows carry the encoder's own ``name`` (for the default model, a label saying it is a
    dequantized 4-bit copy). ``cache``: the embedding cache of ``evaluate.encode_texts``.
    """
    from .evaluate import evaluate_lareqa

    tables, per_query = [], []
    for dataset in params.eval_datasets:
        if dataset in DATASET_LANGUAGES:
            metrics, queries = evaluate_lareqa(encoder, load_eval_data(params, dataset), model=encoder.name,
                                               strategy=strategy, seed=seed, per_query=True, cache=cache,
                                               candidate_context=params.candidate_context)
        else:
            metrics, queries = _miracl_metrics(encoder, params, strategy, seed, cache)
        tables.append(metrics)
        per_query.append(queries)
    return pd.concat(tables, ignore_index=True), _plain(pd.concat(per_query, ignore_index=True))


def _plain(frame: pd.DataFrame) -> pd.DataFrame:
    """Categorical columns as strings, so that parts of different models concatenate cleanly."""
    return frame.astype({c: str for c in frame.columns if isinstance(frame[c].dtype, pd.CategoricalDtype)})


def _save_part(run_dir: Path, tag: str, metrics: pd.DataFrame, per_query: pd.DataFrame) -> None:
    parts = run_dir / "metrics" / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    write_table(per_query, parts / f"{tag}.per_query.parquet")
    write_table(metrics, parts / f"{tag}.csv")  # written last: it marks the model done


def train_and_evaluate(params: StudyParams, run_dir: Path, strategy: str, seed: int,
                       progress: bool = True) -> pd.DataFrame:
    """Fine-tune with one strategy and seed, evaluate at once, keep the weights only with ``keep_models``.

    ``strategy`` is the name of a training run: a trained strategy or a variant's name (its
    settings applied, see ``StudyParams.training_runs``); it labels the result rows. Training
    happens in ``training/<tag>/`` (``train.train``: checkpoints there let a killed run resume
    when called again); the logs are copied to ``train_log/``, the metrics written to
    ``metrics/parts/<tag>.csv``, then the training folder is deleted (with ``keep_models`` the
    final model moves to ``models/<tag>/`` first). Disk use: one model at a time.
    """
    from .models import DualEncoder
    from .train import train

    batches, run_params = params.for_run(strategy)
    tag = model_tag(strategy, seed)
    work = run_dir / "training" / tag
    result = train(run_params, strategy=batches, seed=seed, out_dir=work, progress=progress)
    (run_dir / "train_log").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(result.log_path, run_dir / "train_log" / f"{tag}.csv")
    val_log = Path(result.log_path).with_name("val_log.csv")
    if val_log.exists():
        shutil.copyfile(val_log, run_dir / "train_log" / f"{tag}.val.csv")
    encoder = DualEncoder.from_params(params, name_or_path=str(result.model_dir))
    metrics, per_query = evaluate_encoder(encoder, params, strategy, seed, cache=False)
    _save_part(run_dir, tag, metrics, per_query)
    del encoder
    if params.keep_models:
        target = run_dir / "models" / tag
        shutil.rmtree(target, ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(result.model_dir), target)
    shutil.rmtree(work, ignore_errors=True)
    if not any(work.parent.iterdir()):
        work.parent.rmdir()
    return metrics


def evaluate_zero_shot(params: StudyParams, run_dir: Path) -> Optional[pd.DataFrame]:
    """Evaluate the model before fine-tuning (strategy ``zero-shot``, seed ``seeds[0]``), if a strategy.

    Its embeddings go to the shared cache (``evaluate.encode_texts``), so re-running costs a
    model load only. Returns None (and says so) when ``zero-shot`` is not among the strategies.
    """
    from .models import DualEncoder

    if ZERO_SHOT not in params.strategies:
        log.info("zero-shot is not among the strategies: not evaluated")
        return None
    encoder = DualEncoder.from_params(params)
    metrics, per_query = evaluate_encoder(encoder, params, ZERO_SHOT, params.seeds[0], cache=True)
    _save_part(run_dir, ZERO_SHOT, metrics, per_query)
    return metrics


def collect_metrics(params: StudyParams, run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Join the parts of this study's models into ``metrics/metrics.csv`` and ``metrics/per_query.parquet``.

    Only the parts ``expected_tags(params)`` names are used (a run folder may hold others from
    earlier parameters). Returns ``(metrics, per_query, missing)``; ``missing`` lists the
    expected parts not there yet (e.g. a strategy whose 02_train has not run).
    """
    parts_dir = run_dir / "metrics" / "parts"
    present = [t for t in expected_tags(params) if (parts_dir / f"{t}.csv").is_file()]
    missing = [t for t in expected_tags(params) if t not in present]
    if missing:
        log.warning("not evaluated yet (run 02_train / hybridlib run for them): %s", ", ".join(missing))
    if not present:
        raise StudyError(f"no metrics in {parts_dir}: run 02_train (or the zero-shot evaluation of 03) first")
    metrics = pd.concat([pd.read_csv(parts_dir / f"{t}.csv") for t in present], ignore_index=True)
    per_query = pd.concat([pd.read_parquet(parts_dir / f"{t}.per_query.parquet") for t in present],
                          ignore_index=True)
    write_table(per_query, run_dir / "metrics" / "per_query.parquet")
    write_table(metrics, run_dir / "metrics" / "metrics.csv")
    return metrics, per_query, missing


def setting_counts(metrics: pd.DataFrame) -> pd.DataFrame:
    """How many language pairs each setting has per dataset (multilingual: query languages), for checks."""
    pairs = metrics[metrics["query_lang"] != "all"].drop_duplicates(["eval_dataset", "setting", "query_lang",
                                                                     "pool_lang"])
    counts = pairs.groupby(["eval_dataset", "setting"], sort=False).size().rename("language pairs")
    return counts.reset_index()


def load_metrics(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``metrics/metrics.csv`` and ``metrics/per_query.parquet`` of a run (written by 03_evaluate)."""
    path = run_dir / "metrics" / "metrics.csv"
    if not path.is_file():
        raise StudyError(f"{path}: missing; run 03_evaluate first")
    return pd.read_csv(path), pd.read_parquet(run_dir / "metrics" / "per_query.parquet")


def lareqa_datasets(params: StudyParams) -> list[str]:
    """The LAReQA evaluation datasets of the study (the ones with cross-lingual and multilingual pools)."""
    return [d for d in params.eval_datasets if d in DATASET_LANGUAGES]


def summary_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds of the macro averages (``evaluate.summarize``), one row per (model, dataset, strategy)."""
    from .evaluate import summarize
    from .plots import ordered_strategies

    per_seed = summarize(metrics).reset_index()
    keys = ["model", "eval_dataset", "strategy"]
    table = per_seed.groupby(keys, sort=False).mean(numeric_only=True).drop(columns="seed")
    table.insert(0, "seeds", per_seed.groupby(keys, sort=False)["seed"].nunique())
    order = {s: i for i, s in enumerate(ordered_strategies(per_seed["strategy"].unique()))}
    return table.sort_index(key=lambda index: index.map(order) if index.name == "strategy" else index)


# ---------------------------------------------------------------------------------- training logs
def read_train_log(run_dir: Path, strategy: str, seed: int) -> pd.DataFrame:
    """The training log of one model (one row per step), with ``strategy`` and ``seed`` columns."""
    path = run_dir / "train_log" / f"{model_tag(strategy, seed)}.csv"
    if not path.is_file():
        raise StudyError(f"{path}: missing; train {strategy} seed {seed} first (02_train)")
    return pd.read_csv(path).assign(strategy=strategy, seed=seed)


def read_val_log(run_dir: Path, strategy: str, seed: int) -> pd.DataFrame:
    """The validation log of one model (``step, val_loss, ...``), with ``strategy`` and ``seed``; may be empty."""
    path = run_dir / "train_log" / f"{model_tag(strategy, seed)}.val.csv"
    return pd.read_csv(path).assign(strategy=strategy, seed=seed) if path.is_file() else pd.DataFrame()


def read_train_logs(params: StudyParams, run_dir: Path) -> pd.DataFrame:
    """The training logs of this study's models that exist, in one table with ``strategy`` and ``seed``."""
    frames = [read_train_log(run_dir, s, k) for s in training_labels(params) for k in params.seeds
              if (run_dir / "train_log" / f"{model_tag(s, k)}.csv").is_file()]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def read_val_logs(params: StudyParams, run_dir: Path) -> pd.DataFrame:
    """The validation logs of this study's models that exist, in one table with ``strategy`` and ``seed``."""
    frames = [read_val_log(run_dir, s, k) for s in training_labels(params) for k in params.seeds]
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


# ------------------------------------------------------------------------------ 04: language bias
def rank_distance_table(params: StudyParams, metrics: pd.DataFrame, run_dir: Path) -> pd.DataFrame:
    """Mean rank distance per (dataset, query language, strategy) over seeds; writes ``metrics/rank_distance.csv``.

    Rows: one per query language and an ``all`` row (the macro average the paper reports);
    ``seen`` says whether the query language was trained on. Columns ``eval_dataset, model,
    query_lang, seen, strategy, rank_distance, seed_sd, n_seeds``.
    """
    rows = metrics[(metrics["setting"] == "multilingual") & (metrics["metric"] == "rank_distance")]
    if rows.empty:
        raise StudyError("no rank_distance rows in the metrics (only LAReQA's multilingual pool has them)")
    grouped = rows.groupby(["eval_dataset", "model", "query_lang", "strategy"])["value"]
    table = grouped.agg(rank_distance="mean", seed_sd="std", n_seeds="count").reset_index()
    seen = set(train_languages(params))
    table.insert(3, "seen", [("" if l == "all" else "yes" if l in seen else "no") for l in table["query_lang"]])
    write_table(table, run_dir / "metrics" / "rank_distance.csv")
    return table


def rank_distance_wide(table: pd.DataFrame) -> pd.DataFrame:
    """``rank_distance_table`` as query language (rows, ``all`` last) x strategy (columns), for display."""
    from .plots import ordered_strategies

    wide = table.pivot_table(index=["eval_dataset", "query_lang", "seen"], columns="strategy",
                             values="rank_distance")
    wide = wide[ordered_strategies(wide.columns)]
    wide.columns.name = None
    return wide.sort_index(level="query_lang", key=lambda i: i.map(lambda l: (l == "all", l))
                           if i.name == "query_lang" else i, sort_remaining=False)


def seen_unseen(params: StudyParams, per_query: pd.DataFrame, run_dir: Path) -> pd.DataFrame:
    """``stats.unseen_language_split`` of the ``SIGNIFICANCE_METRICS``: languages trained on vs. not, with
    95% intervals over paragraph clusters and runs; writes ``metrics/seen_unseen.csv``
    (``report.seen_unseen_table`` shows it)."""
    from .stats import unseen_language_split

    rows = per_query[per_query["metric"].isin(SIGNIFICANCE_METRICS)]
    table = unseen_language_split(rows, train_languages(params), clusters=question_clusters(params, rows),
                                  bootstrap_samples=params.bootstrap_samples)
    write_table(table, run_dir / "metrics" / "seen_unseen.csv")
    return table


def load_seen_unseen(run_dir: Path) -> pd.DataFrame:
    """``metrics/seen_unseen.csv`` written by ``seen_unseen`` (notebook 04), or an empty frame."""
    path = Path(run_dir) / "metrics" / "seen_unseen.csv"
    return pd.read_csv(path) if path.is_file() else pd.DataFrame()


# ------------------------------------------------------------------------------------- 05: report
def intervals(params: StudyParams, per_query: pd.DataFrame, run_dir: Path) -> pd.DataFrame:
    """95% bootstrap intervals (``stats.bootstrap_ci``) of the ``SIGNIFICANCE_METRICS``, resampling
    paragraph clusters and training runs; writes ``metrics/intervals.csv``."""
    from .stats import bootstrap_ci

    rows = per_query[per_query["metric"].isin(SIGNIFICANCE_METRICS)]
    table = bootstrap_ci(rows, clusters=question_clusters(params, rows), bootstrap_samples=params.bootstrap_samples)
    write_table(table, run_dir / "metrics" / "intervals.csv")
    return table


def significance(params: StudyParams, per_query: pd.DataFrame, run_dir: Path) -> pd.DataFrame:
    """Paired comparisons of every pair of strategies (``stats.paired_tests``, paragraph clusters shared,
    each side's runs resampled); writes ``metrics/significance.csv``."""
    from .stats import TEST_COLUMNS, paired_tests

    rows = per_query[per_query["metric"].isin(SIGNIFICANCE_METRICS)]
    if rows["strategy"].nunique() < 2:
        table = pd.DataFrame(columns=TEST_COLUMNS)
    else:
        table = paired_tests(rows, clusters=question_clusters(params, rows), bootstrap_samples=params.bootstrap_samples)
    write_table(table, run_dir / "metrics" / "significance.csv")
    return table


def claims(params: StudyParams, significance_table: pd.DataFrame, run_dir: Path) -> pd.DataFrame:
    """The verdict on each of the paper's claims, with the paper's effect sizes beside ours
    (``stats.claim_verdicts``); writes ``metrics/claims.csv``."""
    from .stats import claim_verdicts

    pool_sizes = {d: len(load_eval_data(params, d).candidates) for d in lareqa_datasets(params)}
    table = claim_verdicts(significance_table, pool_sizes=pool_sizes)
    write_table(table, run_dir / "metrics" / "claims.csv")
    return table


def hybrid_alphas(params: StudyParams) -> dict:
    """The alpha of each hybrid training run (label -> alpha), in increasing alpha: the alpha sweep."""
    alphas = {label: run.alpha for label, strategy, run in params.training_runs() if strategy == "hybrid"}
    return dict(sorted(alphas.items(), key=lambda item: item[1]))


def alpha_sweep_figures(params: StudyParams, intervals_table: pd.DataFrame, run_dir: Path) -> list[Path]:
    """The alpha-sweep figures (``plots.alpha_sweep`` per dataset, ``plots.alpha_convergence``) in
    ``figures/``, when the study trains hybrid batches at two alphas or more; else none (an
    ablation's hybrid variants share one alpha)."""
    from .plots import alpha_convergence, alpha_sweep, save_figure

    alphas = hybrid_alphas(params)
    if len(set(alphas.values())) < 2:
        return []
    paths = []
    for dataset in lareqa_datasets(params):
        figure = alpha_sweep(intervals_table, alphas, dataset)
        paths += save_figure(figure, run_dir / "figures" / f"alpha_sweep_{dataset}")
    val_logs = read_val_logs(params, run_dir)
    if not val_logs.empty:
        paths += save_figure(alpha_convergence(val_logs, alphas), run_dir / "figures" / "alpha_convergence")
    return paths
