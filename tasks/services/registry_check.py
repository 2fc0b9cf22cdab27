"""The promotion gate's integration check, run in a fresh process as a user's client would.

`python -m tasks.services.registry_check --root R --name N --version V [--alias A]` loads `models:/N/V`
(or `models:/N@A`, which must point at V) through `mlflow.pyfunc` (nothing of the pipeline's own
loading code), predicts the raw test rows of the project at R, and compares the accuracy with the
test accuracy registered with the version (a check that the registered artifact is the measured
model and runs as registered; no choice reads it). Exit status 0 when they match; the last line
of output says what was found.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from shrinkflow.deployable import LABEL
from tasks.services import tracking
from tasks.services.registry import Rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--alias", help="load models:/NAME@ALIAS (which must point at VERSION)")
    args = parser.parse_args(argv)

    import mlflow

    mlflow.set_tracking_uri(tracking.tracking_uri(args.root.resolve()))
    logged = float(tracking.client(args.root).get_model_version(args.name, args.version)
                   .tags["test_accuracy"])
    if args.alias:
        pointed = tracking.client(args.root).get_model_version_by_alias(args.name, args.alias)
        if str(pointed.version) != args.version:
            print(f"alias {args.alias!r} points at version {pointed.version}, not {args.version}")
            return 1
    uri = f"models:/{args.name}@{args.alias}" if args.alias else f"models:/{args.name}/{args.version}"
    model = mlflow.pyfunc.load_model(uri)
    rows = Rows.of_split(args.root, "test")
    # as a client sends them: a table (strings and gaps as they are) to a model with an input
    # per column, float32 rows or uint8 images to one with a single input
    per_column = len(model.metadata.get_input_schema().inputs) > 1
    served = rows.accuracy(model.predict(rows.inputs if per_column else rows.x)[LABEL])
    # exactly equal (within half a row): the same file on the same rows gives the same labels
    same = abs(served - logged) < 0.5 / len(rows.labels)
    print(f"mlflow.pyfunc on {len(rows.labels)} raw test rows: accuracy {served:.4f}, registered "
          f"{logged:.4f}: {'match' if same else 'MISMATCH'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
