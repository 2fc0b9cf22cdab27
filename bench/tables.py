"""A big generated user table: numbers and text, with gaps, for `make bench`'s table section.

Five classes decided by a noisy mix of two numeric columns and two text columns, so a model needs
both kinds (one column alone predicts little); 2% of the numbers and 3% of the text are missing.
The other numeric columns are noise, as in most real tables.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

CLASSES = ("bronze", "silver", "gold", "platinum", "diamond")
REGIONS = tuple(f"region-{index:02d}" for index in range(40))
PLANS = ("basic", "plus", "pro", "team", "enterprise")


def generated_table(rows: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    numbers = {f"x{index}": rng.normal(0.0, 1.0, rows) for index in range(7)}
    region = rng.integers(0, len(REGIONS), rows)
    plan = rng.integers(0, len(PLANS), rows)
    region_effect = np.linspace(-1.0, 1.0, len(REGIONS))[rng.permutation(len(REGIONS))]
    score = (numbers["x0"] + 0.8 * numbers["x1"] ** 2 + region_effect[region] + 0.6 * plan
             + 0.5 * rng.normal(size=rows))
    edges = np.quantile(score, np.linspace(0, 1, len(CLASSES) + 1)[1:-1])
    frame = pd.DataFrame({**numbers, "region": np.asarray(REGIONS)[region],
                          "plan": np.asarray(PLANS)[plan]})
    for column in numbers:
        frame.loc[rng.random(rows) < 0.02, column] = np.nan
    for column in ("region", "plan"):
        frame.loc[rng.random(rows) < 0.03, column] = None
    frame["tier"] = np.asarray(CLASSES)[np.searchsorted(edges, score)]
    return frame


def write_table(path: Path, rows: int, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    generated_table(rows, seed).to_csv(path, index=False)
    return path


if __name__ == "__main__":
    import sys

    print(write_table(Path(sys.argv[1]), int(sys.argv[2])))
