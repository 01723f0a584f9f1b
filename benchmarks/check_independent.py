"""An independent evaluation of LAReQA, compared with the metrics.csv of ``hybridlib evaluate``.

Nothing of hybridlib's evaluation is used: the JSON files are parsed here (every sentence of
every paragraph is a candidate; a question's answer is the sentence whose break holds the
answer start; questions sharing an ``id`` are parallel), the model is run by
sentence-transformers in fp32 (Transformer + mean Pooling + Normalize, ``query: `` /
``passage: `` prefixes, max length 128, sentence-only candidates), AP is scikit-learn's
``average_precision_score`` for one query and one pool at a time, and the rank of a relevant
candidate is 1 + the number of candidates scoring higher.

    hybridlib evaluate default --dataset xquad-r --out m.csv
    python benchmarks/check_independent.py m.csv --dataset xquad-r     # ~12 min on 2 cores

The data are read from ``$HYBRIDLIB_MIRROR/lareqa/<dataset>/`` (the files whose sha256 the
project pins); the model folder is the default encoder's (``hybridlib fetch`` builds it).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score
from tqdm import tqdm

LANGUAGES = {"xquad-r": "ar de el en es hi ru th tr vi zh".split(), "mlqa-r": "ar de en es hi vi zh".split()}


def read_lareqa(folder: Path, languages: list[str]):
    """(questions, candidates): questions as (lang, id, text, answer row), candidates as (lang, text)."""
    questions, candidates = [], []
    for lang in languages:
        for article in json.loads((folder / f"{lang}.json").read_text(encoding="utf-8"))["data"]:
            for paragraph in article["paragraphs"]:
                first = len(candidates)
                candidates += [(lang, sentence) for sentence in paragraph["sentences"]]
                for qa in paragraph["qas"]:
                    start = qa["answers"][0]["answer_start"]
                    hit = [i for i, (a, b) in enumerate(paragraph["sentence_breaks"]) if a <= start < b]
                    questions.append((lang, qa["id"], qa["question"], first + hit[0]))
    return (pd.DataFrame(questions, columns=["lang", "id", "text", "answer"]),
            pd.DataFrame(candidates, columns=["lang", "text"]))


def embed(folder: Path, texts: list[str], prefix: str) -> np.ndarray:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    transformer = Transformer(str(folder), max_seq_length=128)
    model = SentenceTransformer(modules=[transformer, Pooling(transformer.get_embedding_dimension(), "mean"),
                                         Normalize()], device="cpu")
    return model.encode([prefix + t for t in texts], batch_size=64, convert_to_numpy=True,
                        show_progress_bar=True).astype(np.float32)


def evaluate(questions: pd.DataFrame, candidates: pd.DataFrame, q_emb: np.ndarray, c_emb: np.ndarray):
    """Per-query mAP, R@1, R@10 (and rank distance in the multilingual pool), one pool at a time."""
    answers = questions.groupby("id").apply(lambda g: dict(zip(g["lang"], g["answer"])), include_groups=False)
    languages = sorted(set(candidates["lang"]))
    members = {lang: np.flatnonzero(candidates["lang"].to_numpy() == lang) for lang in languages}
    members["all"] = np.arange(len(candidates))
    rows = []
    for q in tqdm(range(len(questions)), desc="queries"):
        lang, qid = questions["lang"].iat[q], questions["id"].iat[q]
        scores = c_emb @ q_emb[q]
        for pool in languages + ["all"]:
            relevant = list(answers[qid].values()) if pool == "all" else [answers[qid].get(pool)]
            if relevant == [None]:
                continue  # no parallel answer in this language: the query is left out
            pool_scores = scores[members[pool]]
            truth = np.isin(members[pool], relevant)
            ranks = np.array([(pool_scores > scores[r]).sum() + 1 for r in relevant])
            setting = "multilingual" if pool == "all" else "monolingual" if pool == lang else "crosslingual"
            values = {"mAP": average_precision_score(truth, pool_scores),
                      "R@1": np.mean(ranks <= 1), "R@10": np.mean(ranks <= 10)}
            if setting == "multilingual":
                values["rank_distance"] = ranks.max() - ranks.min()
            rows += [(setting, lang, pool, metric, value) for metric, value in values.items()]
    per_query = pd.DataFrame(rows, columns=["setting", "query_lang", "pool_lang", "metric", "value"])
    pairs = per_query.groupby(["setting", "query_lang", "pool_lang", "metric"])["value"].mean()
    return pairs.groupby(["setting", "metric"]).mean()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("metrics_csv", help="the --out file of hybridlib evaluate default")
    parser.add_argument("--dataset", choices=sorted(LANGUAGES), default="xquad-r")
    args = parser.parse_args()
    from hybridlib.models import build_default_model  # only to find the model folder

    folder = Path(os.environ.get("HYBRIDLIB_MIRROR", "../shared/data")) / "lareqa" / args.dataset
    questions, candidates = read_lareqa(folder, LANGUAGES[args.dataset])
    print(f"{args.dataset}: {len(questions)} questions, {len(candidates)} candidates (parsed here)")
    started = time.perf_counter()
    model = build_default_model()
    q_emb = embed(model, questions["text"].tolist(), "query: ")
    c_emb = embed(model, candidates["text"].tolist(), "passage: ")
    independent = evaluate(questions, candidates, q_emb, c_emb)
    print(f"independent evaluation took {time.perf_counter() - started:.0f} s")

    ours = pd.read_csv(args.metrics_csv)
    ours = ours[(ours["query_lang"] == "all") & (ours["eval_dataset"] == args.dataset)]
    ours = ours.set_index(["setting", "metric"])["value"]
    table = pd.DataFrame({"hybridlib": ours.reindex(independent.index), "independent": independent})
    table["difference"] = table["hybridlib"] - table["independent"]
    print(table.to_string(float_format="{:.4f}".format))
    ranking = table.drop(index="rank_distance", level="metric")["difference"].abs()
    print(f"largest |difference| of a macro mAP / R@k: {ranking.max():.4f}")


if __name__ == "__main__":
    main()
