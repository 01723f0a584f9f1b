"""The ``hybridlib`` command: check, fetch, build-model, train, evaluate, search, run.

User mistakes (bad parameters, missing data, a model folder without weights) end with one
line on stderr and exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time

from .config import load_params
from .errors import HybridlibError


def _cmd_check(args) -> None:
    from .models import precision_warning, resolve_device

    params = load_params(args.params)
    print(f"{args.params}: ok ({len(params.strategies)} strategies x {len(params.seeds)} seeds, "
          f"train on {', '.join(params.train_sources)}, evaluate on {', '.join(params.eval_datasets)})")
    warning = precision_warning(params.precision, resolve_device(params.device))
    if warning:
        print(f"warning: {warning}", file=sys.stderr)


def _cmd_fetch(args) -> None:
    from .data import fetch_lareqa

    for dataset in args.datasets:
        paths = fetch_lareqa(dataset)
        print(f"{dataset}: {len(paths)} files verified ({', '.join(paths)}) in {next(iter(paths.values())).parent}")
    if not args.no_model:
        from .models import build_default_model

        print(f"default encoder: {build_default_model()}")


def _cmd_build_model(args) -> None:
    from .models import build_default_model

    print(build_default_model(force=args.force))


def _join_process_group() -> bool:
    """Join the process group that ``torchrun`` / ``accelerate launch`` describe in the environment."""
    import os

    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))  # device "auto" -> this GPU
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return True


def _cmd_train(args) -> None:
    import torch.distributed as dist

    from .train import train

    params = load_params(args.params)
    strategy, run_params = params.for_run(args.strategy)
    joined = _join_process_group()
    try:
        result = train(run_params, strategy=strategy, seed=args.seed, out_dir=args.out)
        if not dist.is_initialized() or dist.get_rank() == 0:
            print(f"model saved to {result.model_dir}; training log {result.log_path}")
    finally:
        if joined:
            dist.destroy_process_group()


def _cmd_evaluate(args) -> None:
    """Evaluate a model on XQuAD-R / MLQA-R, print a summary, write the tidy table to ``--out``.

    ``model``: ``default``, a model folder or a hub name (``DualEncoder``). ``--max-ids`` keeps the
    first question ids only (quick runs); ``--precision`` is the encoder's (``resolve_precision``).
    The CSV (tidy, ``METRIC_COLUMNS``) is written atomically.
    """
    from .constants import ALL, CROSS, MONO
    from .data import load_lareqa
    from .evaluate import evaluate_lareqa, summarize
    from .io import write_table
    from .models import DualEncoder

    data = load_lareqa(args.dataset, max_ids=args.max_ids)
    encoder = DualEncoder(args.model, pooling=args.pooling, query_prefix=args.query_prefix,
                          passage_prefix=args.passage_prefix, max_length=args.max_length, precision=args.precision)
    started = time.perf_counter()
    metrics = evaluate_lareqa(encoder, data, model=encoder.name, strategy=args.strategy, seed=0)
    elapsed = time.perf_counter() - started
    pairs = metrics[(metrics["query_lang"] != ALL) & (metrics["pool_lang"] != ALL)]
    n_settings = pairs.drop_duplicates(["setting", "query_lang", "pool_lang"])["setting"].value_counts()
    print(f"{encoder.name} ({encoder.precision}) on {args.dataset}: {len(data.questions)} questions, "
          f"{len(data.candidates)} candidates; {n_settings.get(MONO, 0)} monolingual + "
          f"{n_settings.get(CROSS, 0)} cross-lingual settings + multilingual ({elapsed:.0f} s)")
    print(summarize(metrics).T.to_string(header=False, float_format="{:.3f}".format))
    if args.out:
        print(f"metrics written to {write_table(metrics, args.out)}")


def _cmd_run(args) -> None:
    from .pipeline import run_study

    run_study(args.params, force=args.force, runs_dir=args.runs_dir, publish=args.publish,
              command=args.command_line, started=args.started)


def _cmd_search(args) -> None:
    from .search import format_results, search_cli

    print(format_results(search_cli(args.model, args.text, dataset=args.dataset, lang=args.lang, k=args.k)))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``hybridlib`` command."""
    parser = argparse.ArgumentParser(prog="hybridlib", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("check", help="validate a parameter file without running anything")
    p.add_argument("params")
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("fetch", help="download and verify XQuAD-R / MLQA-R and build the default encoder")
    p.add_argument("datasets", nargs="*", default=["xquad-r", "mlqa-r"])
    p.add_argument("--no-model", action="store_true", help="do not build the default encoder")
    p.set_defaults(func=_cmd_fetch)

    p = sub.add_parser("build-model", help="build the default encoder (multilingual-e5-small) into the cache")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=_cmd_build_model)

    p = sub.add_parser("train", help="fine-tune with one batch strategy and seed")
    p.add_argument("params")
    p.add_argument("--strategy", required=True, help="a strategy, or the name of a variant of the parameter file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder (train_log.csv, checkpoints/, model/)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="evaluate an encoder on XQuAD-R or MLQA-R")
    p.add_argument("model", help="hub name, model folder, or 'default'")
    p.add_argument("--dataset", default="xquad-r", choices=["xquad-r", "mlqa-r"])
    p.add_argument("--out", help="write the tidy metrics table here (CSV)")
    # None = the settings saved with a fine-tuned model folder, else mean / "query: " / "passage: " / 128
    p.add_argument("--pooling", default=None, choices=["mean", "cls"])
    p.add_argument("--query-prefix", default=None)
    p.add_argument("--passage-prefix", default=None)
    p.add_argument("--max-length", type=int, default=None)
    p.add_argument("--max-ids", type=int, default=None, help="evaluate on the first N question ids only")
    p.add_argument("--strategy", default="zero-shot", help="label of the strategy column")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="autocast precision of the encoder (auto: bf16 on CPUs with fast bf16, else fp32)")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("run", help="run the whole study (notebooks 01-05) from a parameter file")
    p.add_argument("params")
    p.add_argument("--force", action="store_true", help="re-run steps whose outputs exist")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--publish", action="store_true",
                   help="then write results/<run_name>/: report, tables (CSV, LaTeX), notebooks, figures, run.json")
    p.set_defaults(func=_cmd_run)
    p = sub.add_parser("search", help="the top k candidates of a LAReQA pool for a text (exact faiss search)")
    p.add_argument("model", help="hub name, model folder, or 'default'")
    p.add_argument("text", help="a question in any language, or <lang>:<question id> of the dataset")
    # no argparse choices: search_cli's one-line errors name what the dataset has
    p.add_argument("--dataset", default="xquad-r", help="xquad-r or mlqa-r")
    p.add_argument("--lang", default="all", help="the pool: a language of the dataset, or all (multilingual)")
    p.add_argument("-k", type=int, default=10, help="how many candidates to show")
    p.set_defaults(func=_cmd_search)
    return parser


def main(argv=None) -> int:
    """Entry point of the ``hybridlib`` console script."""
    started = time.time()  # `hybridlib run --publish` reports the wall time of the whole command
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.started, args.command_line = started, shlex.join(["hybridlib", *map(str, argv)])
    # library modules log progress at INFO (logging.getLogger(__name__)); show theirs, other packages' warnings
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("hybridlib").setLevel(logging.INFO)
    try:
        args.func(args)
    except HybridlibError as error:
        print(f"hybridlib {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"hybridlib {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
