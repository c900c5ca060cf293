"""Write one of scikit-learn's bundled data sets as a CSV with a header and a label column.

    .venv/bin/python scripts/sklearn_csv.py breast_cancer bc.csv
    dimplicit ingest bc.csv --out bc.zarr --header --label target

Regression sets (diabetes) get a numeric ``target`` column: ingest it with
``--target target`` instead of ``--label``.
"""

from __future__ import annotations

import argparse

from sklearn import datasets

LOADERS = {
    "breast_cancer": datasets.load_breast_cancer,
    "wine": datasets.load_wine,
    "digits": datasets.load_digits,
    "diabetes": datasets.load_diabetes,
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("name", choices=sorted(LOADERS))
    p.add_argument("out", help="CSV file to write")
    args = p.parse_args()
    d = LOADERS[args.name]()
    names = [str(n).replace(",", " ") for n in getattr(d, "feature_names", [])]
    names = names or [f"x{j}" for j in range(d.data.shape[1])]
    with open(args.out, "w", encoding="ascii") as f:
        f.write(",".join([*names, "target"]) + "\n")
        for x, t in zip(d.data, d.target, strict=True):
            f.write(",".join(f"{v:.8g}" for v in x) + f",{t:.8g}\n")


if __name__ == "__main__":
    main()
