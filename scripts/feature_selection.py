#!/usr/bin/env python
"""Feature selection by column-sparse [B; D] (group lasso), on synthetic data and on NSL-KDD.

1. **Synthetic** (El Ghaoui, "What is implicit deep learning?"): a random well-posed implicit
   model with 20 hidden ReLU neurons, 50 inputs of which only ``--used`` have non-zero columns
   in ``[B; D]``, and 100 outputs generates 400 training rows (plus 100 validation rows from
   the same model, used only to choose λ).  An :class:`~dimplicit.ImplicitRegressor` with only
   10 hidden neurons is trained for every λ of ``--lambdas``; the inputs it keeps (non-zero
   column) are compared with the generating support (precision, recall).  λ is chosen on the
   validation rows: a student is refitted without the penalty on the kept inputs only, and
   the largest λ whose refitted validation R² is within ``--r2-slack`` of the best is kept.
2. **NSL-KDD** (the ``clean`` protocol of :mod:`dimplicit.experiments.szekeres2024`: 116
   columns, ``level`` dropped): the implicit autoencoder ``ae-v1:5,32,16`` is trained on a
   seeded subsample of the normal training rows for every λ of ``--nsl-lambdas``; the
   threshold is chosen on the validation rows (:func:`dimplicit.anomaly.metrics.calibrate`)
   and the test rows (KDDTest+) are scored once.  For every λ > 0 a second autoencoder is
   retrained from scratch on the kept columns only (inputs and outputs) and scored the same
   way.

Prints one JSON object; writes ``docs/figures/feature_selection_synthetic.png`` and
``docs/figures/feature_selection_nslkdd.png``.

Example::

    .venv/bin/python scripts/feature_selection.py                 # both parts
    .venv/bin/python scripts/feature_selection.py --part synthetic --seeds 5
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from dimplicit import ImplicitRegressor
from dimplicit.sparsity import column_norms, column_sparse_problem, support_recovery

REPO = Path(__file__).resolve().parents[1]
FIGURES = REPO / "docs" / "figures"
DEFAULT_DATA = Path(os.environ.get("DIMPLICIT_SHARED_DATA", REPO.parent / "shared" / "data"))


# --------------------------------------------------------------------------------------
# 1. Synthetic: support recovery
# --------------------------------------------------------------------------------------


def synthetic_run(seed: int, lambdas, args) -> dict:
    """One generating model (seed ``seed``): train a student for every λ."""
    U, Y, teacher, support = column_sparse_problem(
        args.rows + args.val_rows, args.inputs, 20, 100, args.used, noise=args.noise, seed=seed
    )
    Utr, Ytr, Uva, Yva = U[: args.rows], Y[: args.rows], U[args.rows :], Y[args.rows :]
    path = []
    for lam in lambdas:
        t0 = time.perf_counter()
        student = dict(
            hidden=10, group_lasso=lam, epochs=args.epochs, batch_size=32, lr=1e-3,
            select_best=None, patience=None, random_state=seed,
        )  # fmt: skip
        reg = ImplicitRegressor(**student).fit(Utr, Ytr)
        kept = reg.selected_features_
        rec = support_recovery(kept, support, args.inputs)
        fit_s = time.perf_counter() - t0
        # The penalty also shrinks the kept columns; a student refitted without it on the
        # kept inputs only measures what the selection itself costs (relaxed group lasso).
        refit_r2 = reg.score(Uva, Yva)
        if 0 < len(kept) < args.inputs:
            refit = ImplicitRegressor(**{**student, "group_lasso": 0.0}).fit(Utr[:, kept], Ytr)
            refit_r2 = refit.score(Uva[:, kept], Yva)
        elif len(kept) == 0:
            refit_r2 = float("nan")
        path.append(
            {
                "lambda": lam,
                **rec,
                "train_r2": reg.score(Utr, Ytr),
                "val_r2": reg.score(Uva, Yva),
                "refit_val_r2": refit_r2,
                "norms": reg.feature_norms_.tolist(),
                "fit_s": fit_s,
            }
        )
    best = max(r["refit_val_r2"] for r in path if r["n_selected"])
    chosen = max(
        (r for r in path if r["n_selected"] and r["refit_val_r2"] >= best - args.r2_slack),
        key=lambda r: r["lambda"],
    )
    return {
        "seed": seed,
        "support": support.tolist(),
        "teacher_norms": column_norms(teacher).tolist(),
        "path": path,
        "chosen_lambda": chosen["lambda"],
        "chosen": {k: v for k, v in chosen.items() if k != "norms"},
    }


def synthetic(args) -> dict:
    runs = [synthetic_run(s, args.lambdas, args) for s in range(args.seeds)]
    summary = []
    for i, lam in enumerate(args.lambdas):
        rows = [r["path"][i] for r in runs]
        summary.append(
            {
                "lambda": lam,
                **{
                    k: float(np.mean([r[k] for r in rows]))
                    for k in (
                        "precision",
                        "recall",
                        "n_selected",
                        "train_r2",
                        "val_r2",
                        "refit_val_r2",
                        "fit_s",
                    )  # fmt: skip
                },
            }
        )
    chosen = [r["chosen"] for r in runs]
    out = {
        "setup": {
            "rows": args.rows,
            "val_rows": args.val_rows,
            "inputs": args.inputs,
            "used": args.used,
            "teacher_hidden": 20,
            "outputs": 100,
            "student_hidden": 10,
            "noise": args.noise,
            "epochs": args.epochs,
            "seeds": args.seeds,
            "r2_slack": args.r2_slack,
        },  # fmt: skip
        "path_mean_over_seeds": summary,
        "chosen": {
            "lambda": [c["lambda"] for c in chosen],
            "precision": [c["precision"] for c in chosen],
            "recall": [c["recall"] for c in chosen],
            "val_r2": [c["val_r2"] for c in chosen],
            "refit_val_r2": [c["refit_val_r2"] for c in chosen],
            "mean_precision": float(np.mean([c["precision"] for c in chosen])),
            "mean_recall": float(np.mean([c["recall"] for c in chosen])),
        },
    }
    out["figure"] = str(plot_synthetic(runs[0], summary, args.figures))
    out["seed0"] = {k: runs[0][k] for k in ("support", "chosen_lambda", "chosen")}
    return out


def plot_synthetic(run: dict, summary, folder: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    lam = run["chosen_lambda"]
    learned = next(r for r in run["path"] if r["lambda"] == lam)
    plain = run["path"][0]
    teacher = np.asarray(run["teacher_norms"])
    j = np.arange(len(teacher))
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [2, 1]})
    w = 0.28
    for off, norms, label in (
        (-w, teacher, "generating model"),
        (0, np.asarray(learned["norms"]), f"learned, λ = {lam:g}"),
        (w, np.asarray(plain["norms"]), f"learned, λ = {plain['lambda']:g}"),
    ):
        ax.bar(j + off, norms / norms.max(), width=w, label=label)
    ax.set_xlabel("input feature j")
    ax.set_ylabel("‖[B; D][:, j]‖₂ / max")
    ax.set_title(
        f"Column norms (seed {run['seed']}): precision {learned['precision']:.2f}, "
        f"recall {learned['recall']:.2f}"
    )
    ax.legend(fontsize=8)
    lams = [s["lambda"] for s in summary]
    for key, label in (
        ("precision", "precision"), ("recall", "recall"), ("val_r2", "val R², penalised"),
        ("refit_val_r2", "val R², refitted on kept"),
    ):  # fmt: skip
        bx.plot(lams, [s[key] for s in summary], marker="o", label=label)
    bx.set_xlabel("λ")
    bx.set_title("Mean over generating models")
    bx.set_ylim(-0.05, 1.05)
    bx.legend(fontsize=8)
    fig.tight_layout()
    path = folder / "feature_selection_synthetic.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------
# 2. NSL-KDD: which traffic features does an implicit autoencoder need?
# --------------------------------------------------------------------------------------


def readable_names(names, train_file: Path) -> list[str]:
    """``protocol_type=tcp`` instead of ``tcp``: the one-hot columns are named by the raw
    category values; the file's categorical columns say which value belongs to which."""
    owner = {}
    with open(train_file, newline="") as fh:
        for row in csv.reader(fh):
            for col, name in ((1, "protocol_type"), (2, "service"), (3, "flag")):
                owner.setdefault(row[col], name)
    return [f"{owner[n]}={n}" if n in owner else n for n in names]


def source_feature(name: str) -> str:
    return name.split("=", 1)[0]


def train_autoencoder(X, X_val, y_val, X_test, y_test, lam, args):
    """Train ``ae-v1:5,32,16`` on ``X`` with group lasso λ; validation-chosen threshold."""
    from dimplicit.anomaly.metrics import calibrate, classification_metrics
    from dimplicit.fit import fit
    from dimplicit.forward import predict
    from dimplicit.gradients import BackwardOptions
    from dimplicit.losses import row_rmse
    from dimplicit.model import build_model
    from dimplicit.optim import OptimizerConfig
    from dimplicit.partition import StepConfig
    from dimplicit.solvers import SolverOptions

    p = X.shape[1]
    fwd = SolverOptions("picard", tol=1e-4, check_every=4)
    config = StepConfig("mse", fwd, BackwardOptions("implicit", solver=fwd))
    steps = args.nsl_epochs * math.ceil(len(X) / 256)
    opt = OptimizerConfig("adam", lr=3e-3, schedule="cosine", total_steps=steps, group_lasso=lam)
    model = build_model("ae-v1:5,32,16", p, p, kappa=0.95, seed=0, dtype="float32")
    t0 = time.perf_counter()
    trained, _ = fit(
        model, X, X, config=config, optimizer=opt, epochs=args.nsl_epochs, batch_size=256, seed=0
    )
    train_s = time.perf_counter() - t0
    raw_val = row_rmse(predict(trained, X_val, fwd)[0], X_val)
    raw_test = row_rmse(predict(trained, X_test, fwd)[0], X_test)
    cal = calibrate(raw_val, y_val)
    z = cal.zscore(raw_test)
    m = classification_metrics(y_test, cal.flag(z), z)
    metrics = {k: m[k] for k in ("f1", "precision", "recall", "roc_auc")}
    return trained, {"val_auc": cal.val_auc, "val_f1": cal.val_f1, **metrics, "train_s": train_s}


def nslkdd(args) -> dict:
    from dimplicit.experiments.szekeres2024 import prepare

    data = prepare("nsl-kdd", args.data, "clean")
    names = readable_names(data.feature_names, Path(args.data) / "nsl-kdd" / "KDDTrain+.txt")
    rng = np.random.default_rng(0)
    X = data.scaled("train")
    rows = np.sort(rng.choice(len(X), min(args.nsl_rows, len(X)), replace=False))
    X = X[rows]
    X_val, X_test = data.scaled("val"), data.scaled("test")
    runs = []
    for lam in args.nsl_lambdas:
        trained, sparse = train_autoencoder(X, X_val, data.y_val, X_test, data.y_test, lam, args)
        norms = column_norms(trained)
        kept = np.flatnonzero(norms > 0)
        run = {
            "lambda": lam,
            "n_kept": len(kept),
            "penalised": sparse,
        }
        if lam > 0 and 0 < len(kept) < len(names):
            _, sub = train_autoencoder(
                X[:, kept], X_val[:, kept], data.y_val, X_test[:, kept], data.y_test, 0.0, args
            )
            run["retrained_on_kept"] = sub
            order = kept[np.argsort(-norms[kept], kind="stable")]
            run["kept"] = [names[j] for j in order]
            run["kept_sources"] = sorted({source_feature(names[j]) for j in kept})
            run["dropped_sources"] = sorted(
                {source_feature(n) for n in names} - set(run["kept_sources"])
            )
        run["norms"] = norms.tolist()
        runs.append(run)
        print(json.dumps({k: v for k, v in run.items() if k != "norms"}), file=sys.stderr)
    full = runs[0]["penalised"]
    # λ chosen on validation only: the largest λ whose retrained subset model keeps the
    # validation AUC within --auc-slack of the full-feature model's.
    ok = [
        r for r in runs[1:]
        if "retrained_on_kept" in r
        and r["retrained_on_kept"]["val_auc"] >= full["val_auc"] - args.auc_slack
    ]  # fmt: skip
    chosen = max(ok, key=lambda r: r["lambda"]) if ok else None
    out = {
        "setup": {
            "protocol": "clean (116 columns, level dropped)",
            "arch": "ae-v1:5,32,16",
            "train_rows": len(X),
            "train_rows_available": int(len(data.X_train)),
            "epochs": args.nsl_epochs,
            "validation_rows": len(X_val),
            "test_rows": len(X_test),
            "auc_slack": args.auc_slack,
        },
        "runs": [{k: v for k, v in r.items() if k != "norms"} for r in runs],
        "chosen_lambda": chosen["lambda"] if chosen else None,
    }
    out["figure"] = str(plot_nslkdd(runs, names, chosen, args.figures))
    return out


def plot_nslkdd(runs, names, chosen, folder: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    show = chosen or runs[-1]
    norms = np.asarray(show["norms"])
    full = np.asarray(runs[0]["norms"])
    order = np.argsort(-norms, kind="stable")[:40]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 5.5), gridspec_kw={"width_ratios": [2, 1]})
    y = np.arange(len(order))
    ax.barh(y + 0.2, full[order] / full.max(), height=0.4, label="λ = 0")
    ax.barh(y - 0.2, norms[order] / max(norms.max(), 1e-300), height=0.4,
            label=f"λ = {show['lambda']:g} ({show['n_kept']} of {len(norms)} kept)")  # fmt: skip
    ax.set_yticks(y, [names[j] for j in order], fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel("‖B[:, j]‖₂ / max")
    ax.set_title("Largest input-column norms, ae-v1:5,32,16 on NSL-KDD")
    ax.legend(fontsize=8)
    lams = [r["lambda"] for r in runs]
    bx.plot(lams, [r["penalised"]["roc_auc"] for r in runs], "o-", label="test AUC, penalised")
    bx.plot(lams, [r["penalised"]["f1"] for r in runs], "s-", label="test F1, penalised")
    sub = [r for r in runs if "retrained_on_kept" in r]
    bx.plot([r["lambda"] for r in sub], [r["retrained_on_kept"]["roc_auc"] for r in sub], "o--",
            label="test AUC, retrained on kept")  # fmt: skip
    bx.plot([r["lambda"] for r in sub], [r["retrained_on_kept"]["f1"] for r in sub], "s--",
            label="test F1, retrained on kept")  # fmt: skip
    for r in runs:
        bx.annotate(str(r["n_kept"]), (r["lambda"], r["penalised"]["roc_auc"]), fontsize=7,
                    textcoords="offset points", xytext=(0, 5))  # fmt: skip
    bx.set_xlabel("λ (numbers: features kept)")
    bx.legend(fontsize=7)
    fig.tight_layout()
    path = folder / "feature_selection_nslkdd.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=["synthetic", "nsl-kdd", "all"], default="all")
    p.add_argument("--seeds", type=int, default=5, help="generating models (synthetic)")
    p.add_argument("--rows", type=int, default=400)
    p.add_argument("--val-rows", type=int, default=100)
    p.add_argument("--inputs", type=int, default=50)
    p.add_argument("--used", type=int, default=10, help="inputs the generating model uses")
    p.add_argument("--noise", type=float, default=0.05, help="output noise / output std")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--lambdas", type=_floats, default=[0, 1, 2, 3, 4, 6, 8])
    p.add_argument("--r2-slack", type=float, default=0.01)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--nsl-rows", type=int, default=10000, help="normal training rows used")
    p.add_argument("--nsl-epochs", type=int, default=10)
    p.add_argument("--nsl-lambdas", type=_floats, default=[0, 1, 2, 3, 4, 5, 5.5])
    p.add_argument("--auc-slack", type=float, default=0.005)
    p.add_argument("--threads", type=int, default=2, help="BLAS threads")
    p.add_argument("--figures", type=Path, default=FIGURES)
    return p.parse_args(argv)


def _floats(text):
    return [float(v) for v in text.split(",")]


def main(argv=None) -> dict:
    args = parse_args(argv)
    load = os.getloadavg()
    out = {"command": " ".join(sys.argv), "load_before": [round(v, 2) for v in load]}
    t0 = time.perf_counter()
    with threadpool_limits(args.threads):
        if args.part in ("synthetic", "all"):
            out["synthetic"] = synthetic(args)
        if args.part in ("nsl-kdd", "all"):
            out["nsl_kdd"] = nslkdd(args)
    out["seconds"] = time.perf_counter() - t0
    out["load_after"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
