"""``dimplicit certify``: the robustness certificate of a trained model, as JSON."""

from __future__ import annotations

import argparse
import json

DESCRIPTION = """\
For a well-posed model (‖A‖∞ < 1) with a 1-Lipschitz activation, bound the sensitivity of
every output to every input by the non-negative matrix

  M = |C| (I − |A|)⁻¹ |B| + |D|,    |ŷ(u + δ) − ŷ(u)| ≤ M |δ|  (componentwise),

in the model's input space (standardised features), and print one JSON object: ‖A‖∞, the
largest entry of M and, per output, its largest entries with the input features' names.
With --data, also over the first N test rows: classify, the certified ℓ∞ radius (median,
min) within which no perturbation can change the predicted class; autoencode, the anomaly
score and how much a perturbation of size --eps can lower it (all features, and per
feature the largest bounds).
"""


def add_parser(sub):
    from dimplicit.commands._types import positive_int

    p = sub.add_parser(
        "certify",
        help="robustness certificate: sensitivity bound and ℓ∞ radii of a trained model (JSON)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model", required=True, metavar="PATH", help="model.npz written by 'dimplicit train'"
    )
    p.add_argument(
        "--data",
        default=None,
        metavar="PATH",
        help="store whose test rows to certify (default: none, the bound matrix only)",
    )
    p.add_argument(
        "--rows", type=positive_int, default=100, metavar="N", help="test rows to certify"
    )
    p.add_argument(
        "--eps",
        type=float,
        default=0.1,
        help="ℓ∞ perturbation, in standardised units, of the autoencoder score bound",
    )
    p.add_argument("--top", type=positive_int, default=5, metavar="K",
                   help="largest entries of M shown per output")  # fmt: skip
    p.add_argument("--out", default=None, metavar="PATH", help="also write the JSON here")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from dimplicit.model import ImplicitModel

    if not args.eps > 0:
        raise ValueError(f"--eps must be positive, got {args.eps}")
    model = ImplicitModel.load(args.model)
    result = certify_report(model, args.data, args.rows, args.eps, args.top)
    text = json.dumps(result)
    if args.out:
        from dimplicit.atomic import write_file

        write_file(Path(args.out), lambda fh: fh.write((text + "\n").encode()))
    print(text)
    return 0


def certify_report(model, data, rows: int, eps: float, top: int) -> dict:
    """The JSON object ``dimplicit certify`` prints."""
    import numpy as np

    from dimplicit import certify

    norm = certify.check_certifiable(model)
    M = certify.sensitivity_bound(model)
    train = model.meta.get("training", {})
    names = train.get("feature_names") or [f"x{j}" for j in range(model.n_inputs)]
    task = train.get("task")
    out_names = {"classify": train.get("label_classes"), "autoencode": names}.get(task)
    if not out_names or len(out_names) != model.n_outputs:
        out_names = [f"y{i}" for i in range(model.n_outputs)]
    per_output = {}
    for i, oname in enumerate(out_names):
        idx = np.argsort(-M[i], kind="stable")[:top]
        per_output[str(oname)] = {str(names[j]): float(M[i, j]) for j in idx}
    out = {"task": task,
           "rho_bound": norm, "bound_max": float(M.max()),
           "bound_row_sums_max": float(M.sum(axis=1).max()),
           "top_per_output": per_output}  # fmt: skip
    if data is None:
        return out
    U = _test_rows(model, data, rows)
    out["rows"] = int(U.shape[0])
    if task == "classify":
        r = np.array([certify.linf_radius(model, u, M) for u in U])
        out["linf_radius"] = {"median": float(np.median(r)), "min": float(r.min()),
                              "max": float(r.max())}  # fmt: skip
    elif task == "autoencode":
        total, per = certify.score_decrease_bound(model, eps, M)
        scores = np.array([certify.score_bound(model, u, eps, M)["score"] for u in U])
        idx = np.argsort(-per, kind="stable")[:top]
        out["eps"] = eps
        out["score"] = {"median": float(np.median(scores)), "min": float(scores.min())}
        out["max_score_decrease_all_features"] = total
        out["max_score_decrease_per_feature"] = {str(names[j]): float(per[j]) for j in idx}
        out["max_score_decrease_per_feature_median"] = float(np.median(per))
    else:
        raise ValueError(f"--data certifies classify and autoencode models, not task {task!r}")
    return out


def _test_rows(model, data, rows: int):
    """The first ``rows`` test rows of the store ``data`` (all rows if it has no test split)."""
    import numpy as np

    from dimplicit import certify
    from dimplicit.data.store import SPLIT_CODES, open_store
    from dimplicit.predict import check_model_fits

    store = open_store(data)
    check_model_fits(model, store)
    split = np.asarray(store.split[:])
    idx = np.flatnonzero(split == SPLIT_CODES["test"])
    if idx.size == 0:
        idx = np.arange(store.n_rows)
    idx = idx[:rows]
    if idx.size == 0:
        raise ValueError(f"{store.path} has no rows")
    return certify.model_space(
        model, np.asarray(store.features[idx[0] : idx[-1] + 1])[idx - idx[0]]
    )
