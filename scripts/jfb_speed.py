"""JFB's speed claim (Fung et al., AAAI 2022): validation accuracy vs training wall time.

Trains the same dense ReLU implicit classifier (:func:`dimplicit.model.dense_model`, same
forward solver, same Adam optimizer, same data order) with the four backward methods of
:class:`dimplicit.gradients.BackwardOptions` -- ``implicit`` (adjoint fixed point), ``neumann``
(series to tolerance), ``jfb`` and ``phantom-K`` -- through :func:`dimplicit.fit.fit`, several
seeds each, on

* ``digits`` (scikit-learn's bundled 8×8 digits, 10 classes): stratified 60/20/20
  train/validation/test split (``train_test_split``, ``random_state=0``), standardised with the
  training rows' statistics;
* ``nsl-kdd``: KDDTrain+ ingested with the package (:func:`dimplicit.data.ingest.ingest_csv`,
  ``fmt="nsl-kdd"``: one-hot categoricals, statistics of the training split), 5 classes
  (normal, DoS, Probe, R2L, U2R; :data:`dimplicit.data.schema.NSLKDD_ATTACK_CATEGORY`), a
  seeded subsample of ``--kdd-train-rows`` training and ``--kdd-val-rows`` validation rows.

After every epoch ``epoch_callback`` scores the validation rows; the time spent there is
*excluded* from the training time (the clock is read on entry and the evaluation time is
subtracted); the process's CPU time is recorded beside the wall time, since the latter
depends on what else runs on the machine.  For each data set, seed and target fraction T
(``--targets``, default 0.99, 0.995, 0.998) the target accuracy is T times the best validation
accuracy any method reached with that seed; the script reports each method's time to first
reach it, its mean training time per epoch and the ratios to ``implicit``.  Prints one JSON
object (also written to ``--out``) and writes ``docs/figures/jfb_speed_<data>.png`` (curves;
the titles give the seconds per epoch).

    .venv/bin/python scripts/jfb_speed.py                   # 22 min on 2 shared, loaded cores
    .venv/bin/python scripts/jfb_speed.py --quick           # a one-minute smoke run
    .venv/bin/python scripts/jfb_speed.py --resummarize     # summaries/figures from --out
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from dimplicit.fit import fit
from dimplicit.forward import predict
from dimplicit.gradients import BackwardOptions
from dimplicit.model import dense_model
from dimplicit.optim import OptimizerConfig
from dimplicit.partition import StepConfig
from dimplicit.solvers import SolverOptions

# Where tests/conftest.py looks too: $DIMPLICIT_SHARED_DATA, else ../shared/data beside the repo.
DEFAULT_DATA = Path(
    os.environ.get("DIMPLICIT_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
METHODS = ("implicit", "neumann", "jfb", "phantom-5")


def load_digits_split():
    """Stratified 60/20/20 split of scikit-learn's digits, standardised on the training rows."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X_tr, X_rest, y_tr, y_rest = train_test_split(X, y, test_size=0.4, stratify=y,
                                                  random_state=0)  # fmt: skip
    X_val, _, y_val, _ = train_test_split(X_rest, y_rest, test_size=0.5, stratify=y_rest,
                                          random_state=0)  # fmt: skip
    mean, std = X_tr.mean(axis=0), X_tr.std(axis=0)
    std[std == 0] = 1.0
    f = lambda a: ((a - mean) / std).astype(np.float32)  # noqa: E731
    return f(X_tr), y_tr.astype(np.int64), f(X_val), y_val.astype(np.int64), 10


def load_nslkdd(data_dir: Path, train_rows: int, val_rows: int, seed: int = 0):
    """KDDTrain+ through the package's ingest, 5 classes, seeded subsamples of its splits."""
    from dimplicit.data.ingest import ingest_csv
    from dimplicit.data.preprocess import standardize
    from dimplicit.data.schema import NSLKDD_ATTACK_CATEGORY
    from dimplicit.data.store import open_store

    src = data_dir / "nsl-kdd" / "KDDTrain+.txt"
    if not src.is_file():
        raise FileNotFoundError(f"{src} not found (set DIMPLICIT_SHARED_DATA or --data-dir)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kdd.zarr"
        ingest_csv(src, path, fmt="nsl-kdd", splits=(0.8, 0.2, 0.0), split_seed=0,
                   stats_rows="train", overwrite=True)  # fmt: skip
        st = open_store(path)
        X = standardize(st.features[:].astype(np.float32), st.mean, st.std)
        codes, split, names = np.asarray(st.labels[:]), np.asarray(st.split[:]), st.label_classes
    cats = ["normal", "DoS", "Probe", "R2L", "U2R"]
    cat_of = np.array([cats.index(NSLKDD_ATTACK_CATEGORY.get(nm, "normal")) for nm in names])
    y = cat_of[codes]
    rng = np.random.default_rng(seed)
    tr = np.nonzero(split == 0)[0]
    va = np.nonzero(split == 1)[0]
    tr = np.sort(rng.choice(tr, size=min(train_rows, tr.size), replace=False))
    va = np.sort(rng.choice(va, size=min(val_rows, va.size), replace=False))
    return np.ascontiguousarray(X[tr]), y[tr], np.ascontiguousarray(X[va]), y[va], len(cats)


def train_one(data, method: str, seed: int, args) -> dict:
    """One training run; per-epoch validation accuracy and cumulative training seconds."""
    U, y, Uv, yv, q = data
    model = dense_model(U.shape[1], args.hidden, q, activation="relu", kappa=args.kappa,
                        a_norm=args.a_norm, seed=seed)  # fmt: skip
    fwd = SolverOptions(tol=args.tol, max_iter=300)
    config = StepConfig(loss="cross_entropy", forward=fwd,
                        backward=BackwardOptions(method, solver=fwd))  # fmt: skip
    clock = {"eval": 0.0, "eval_cpu": 0.0}
    curve = []

    def on_epoch(epoch, m):
        t_in, c_in = time.perf_counter(), time.process_time()
        Yhat, _, _ = predict(m, Uv, fwd)
        acc = float((np.asarray(Yhat).argmax(axis=1) == yv).mean())
        curve.append({"epoch": epoch + 1, "train_s": t_in - clock["start"] - clock["eval"],
                      "train_cpu_s": c_in - clock["start_cpu"] - clock["eval_cpu"],
                      "val_accuracy": acc})  # fmt: skip
        clock["eval"] += time.perf_counter() - t_in
        clock["eval_cpu"] += time.process_time() - c_in

    steps = []
    clock["start"], clock["start_cpu"] = time.perf_counter(), time.process_time()
    fit(model, U, y, config=config, optimizer=OptimizerConfig(name="adam", lr=args.lr),
        epochs=args.epochs, batch_size=args.batch_size, seed=seed,
        callback=steps.append, epoch_callback=on_epoch)  # fmt: skip
    back = [s.get("backward_iters") for s in steps]
    back = [b for b in back if b is not None]
    return {"method": method, "seed": seed, "curve": curve,
            "backward_iterations_mean": float(np.mean(back)) if back else None}  # fmt: skip


def summarize(runs: list, target: float, clock: str = "train_s") -> dict:
    """Time to the target accuracy and per-epoch time, per method, averaged over seeds.

    ``clock`` is ``"train_s"`` (wall time) or ``"train_cpu_s"`` (this process's CPU time).
    """
    seeds = sorted({r["seed"] for r in runs})
    per = {m: {"time_to_target": [], "epochs_to_target": [], "epoch_s": [], "final_acc": [],
               "best_acc": []} for m in METHODS}  # fmt: skip
    for s in seeds:
        rs = [r for r in runs if r["seed"] == s]
        best = max(max(c["val_accuracy"] for c in r["curve"]) for r in rs)
        for r in rs:
            c = r["curve"]
            hit = next((e for e in c if e["val_accuracy"] >= target * best), None)
            p = per[r["method"]]
            p["time_to_target"].append(hit[clock] if hit else float("nan"))
            p["epochs_to_target"].append(hit["epoch"] if hit else float("nan"))
            p["epoch_s"].append(c[-1][clock] / c[-1]["epoch"])
            p["final_acc"].append(c[-1]["val_accuracy"])
            p["best_acc"].append(max(e["val_accuracy"] for e in c))
    out = {}
    for m, p in per.items():
        out[m] = {k: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
                  for k, v in p.items()}  # fmt: skip
        out[m]["reached_target"] = int(np.isfinite(p["time_to_target"]).sum())
        out[m]["time_to_target_per_seed"] = p["time_to_target"]
    ref = out["implicit"]
    for m in METHODS:
        out[m]["epoch_speedup_vs_implicit"] = ref["epoch_s"] / out[m]["epoch_s"]
        # Per seed, then averaged: the speed-up at equal validation accuracy.
        ratios = np.asarray(per["implicit"]["time_to_target"]) / np.asarray(
            per[m]["time_to_target"])
        out[m]["target_speedup_vs_implicit"] = (
            float(np.nanmean(ratios)) if np.isfinite(ratios).any() else float("nan"))
    return out


def plot(name: str, runs: list, summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = dict(zip(METHODS, ("C0", "C1", "C2", "C3"), strict=True))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    lo = min(min(e["val_accuracy"] for e in r["curve"]) for r in runs)
    hi = max(max(e["val_accuracy"] for e in r["curve"]) for r in runs)
    clocks = (("train_s", "wall"), ("train_cpu_s", "cpu"))
    for ax, (clock, what) in zip(axes, clocks, strict=True):
        for r in runs:
            c = r["curve"]
            ax.plot([e[clock] for e in c], [e["val_accuracy"] for e in c], "-", lw=1.2,
                    color=colors[r["method"]], alpha=0.75,
                    label=r["method"] if r["seed"] == runs[0]["seed"] else None)  # fmt: skip
        ax.set_ylim(max(lo, hi - 0.25), hi + 0.01)
        ax.set_xlabel(f"cumulative training {what} time (s, evaluation excluded)")
        sp = ", ".join(f"{m} {summary[what][m]['epoch_s']:.2f}" for m in METHODS)
        ax.set_title(f"{name}, {what} s/epoch: {sp}", fontsize=8)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("validation accuracy")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="digits,nsl-kdd", help="(default: digits,nsl-kdd)")
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..S-1 (default: 3)")
    ap.add_argument("--hidden", type=int, default=128, help="hidden neurons (default: 128)")
    ap.add_argument("--a-norm", type=float, default=0.9, help="initial ‖A‖∞ (default: 0.9)")
    ap.add_argument("--kappa", type=float, default=0.95, help="κ (default: 0.95)")
    ap.add_argument("--tol", type=float, default=1e-4, help="solver tolerance (default: 1e-4)")
    ap.add_argument("--lr", type=float, default=1e-3, help="Adam step (default: 1e-3)")
    ap.add_argument("--digits-epochs", type=int, default=30, help="(default: 30)")
    ap.add_argument("--kdd-epochs", type=int, default=8, help="(default: 8)")
    ap.add_argument("--batch-size", type=int, default=64, help="(default: 64)")
    ap.add_argument("--kdd-train-rows", type=int, default=10000, help="(default: 10000)")
    ap.add_argument("--kdd-val-rows", type=int, default=5000, help="(default: 5000)")
    ap.add_argument("--targets", type=lambda s: [float(v) for v in s.split(",")],
                    default=[0.99, 0.995, 0.998],
                    help="targets = T × the seed's best validation accuracy, for each T "
                         "(default: 0.99,0.995,0.998)")
    ap.add_argument("--resummarize", action="store_true",
                    help="recompute the summaries and figures from --out (no training)")
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--quick", action="store_true", help="one seed, few epochs (smoke run)")
    ap.add_argument("--out", type=Path, default=Path("runs/jfb_speed/results.json"))
    ap.add_argument("--figures", type=Path, default=Path("docs/figures"))
    args = ap.parse_args()
    if args.resummarize:
        finish(json.loads(args.out.read_text()), args)
        return
    if args.quick:
        args.seeds, args.digits_epochs, args.kdd_epochs, args.kdd_train_rows = 1, 3, 2, 2000
    res = {"args": {k: str(v) for k, v in vars(args).items()}, "load_avg_start": os.getloadavg()}
    for name in args.datasets.split(","):
        if name == "digits":
            data, args.epochs = load_digits_split(), args.digits_epochs
        elif name == "nsl-kdd":
            data = load_nslkdd(args.data_dir, args.kdd_train_rows, args.kdd_val_rows)
            args.epochs = args.kdd_epochs
        else:
            raise SystemExit(f"unknown data set {name!r}")
        # Warm-up (discarded): the first run in a process pays one-time costs (imports, caches).
        warm = argparse.Namespace(**{**vars(args), "epochs": 1})
        for method in METHODS:
            train_one(tuple(a[:256] if i < 4 else a for i, a in enumerate(data)), method, 0, warm)
        runs = []
        for seed in range(args.seeds):
            for method in METHODS:  # interleaved, so that load drifts hit every method alike
                r = train_one(data, method, seed, args)
                runs.append(r)
                last = r["curve"][-1]
                print(json.dumps({"data": name, "method": method, "seed": seed,
                                  "train_s": round(last["train_s"], 2),
                                  "train_cpu_s": round(last["train_cpu_s"], 2),
                                  "val_accuracy": last["val_accuracy"]}), flush=True)  # fmt: skip
        res[name] = {"train_rows": len(data[0]), "val_rows": len(data[2]), "classes": data[4],
                     "epochs": args.epochs, "runs": runs}  # fmt: skip
    res["load_avg_end"] = os.getloadavg()
    finish(res, args)


def finish(res: dict, args) -> None:
    """Summaries for every target and both clocks, the figures, the JSON file and stdout."""
    for name, d in res.items():
        if not (isinstance(d, dict) and "runs" in d):
            continue
        d["summary"] = {
            f"{t:g}": {"wall": summarize(d["runs"], t, "train_s"),
                       "cpu": summarize(d["runs"], t, "train_cpu_s")}
            for t in args.targets
        }  # fmt: skip
        plot(name, d["runs"], d["summary"][f"{args.targets[0]:g}"],
             args.figures / f"jfb_speed_{name}.png")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res))
    print(json.dumps({k: (v["summary"] if isinstance(v, dict) and "summary" in v else v)
                      for k, v in res.items()}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
