"""Synthetic evaluation tables shared by the report and publish tests."""
import pandas as pd


def macro_averages(per_query: pd.DataFrame) -> pd.DataFrame:
    """Macro averages as the evaluation writes them (``metrics.csv``): the mean per cell, then ``all`` per setting."""
    keys = ["model", "strategy", "seed", "eval_dataset", "setting", "metric"]
    cells = per_query.groupby([*keys, "query_lang", "pool_lang"], as_index=False)["value"].mean()
    averaged = cells.groupby(keys, as_index=False)["value"].mean().assign(query_lang="all", pool_lang="all")
    return pd.concat([cells, averaged], ignore_index=True)
