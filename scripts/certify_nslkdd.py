#!/usr/bin/env python
"""Robustness certificates of the NSL-KDD anomaly autoencoder (issue 17, part 3).

How much can an attacker lower a detected attack's anomaly score by changing its features?
The script prepares NSL-KDD as the Szekeres & Izsák protocol does
(:func:`dimplicit.experiments.szekeres2024.prepare`, protocol ``clean``: 116 standardised
columns, the label-derived ``level`` dropped), trains (or loads) a dense implicit autoencoder
with ‖A‖∞ ≤ 0.95 (:data:`RECIPE`) on the normal training rows, calibrates the anomaly
threshold on the validation rows (:func:`dimplicit.anomaly.metrics.calibrate`), and then, over
the *detected* attack rows of KDDTest+ (attacks whose score is above the threshold):

* **per feature** — the certified bound ``ε ‖M e_l + e_l‖₂ / √p`` on how much moving feature
  ``l`` alone by ``ε`` (standardised units) can lower the score
  (:func:`dimplicit.certify.score_decrease_bound`), the ``ε`` in raw units (``ε σ_l``), the
  share of detected rows certified to stay detected, and the largest decrease an attack
  actually found (projected sign-gradient steps on that feature plus a 21-point line search)
  on a sample of rows;
* **per row** — the certified ℓ∞ radius ``(s(u) − t) / (‖(M + I) 1‖₂ / √p)``: no
  perturbation of every feature by less than it can bring the score ``s(u)`` under the
  threshold ``t``; and, on the sample, the smallest ``ε`` at which a projected gradient
  attack on the score did bring it under (bisection), the *PGD radius*;
* **categorical columns** — the one-hot dummies of ``protocol_type``, ``service`` and ``flag``
  cannot move independently: changing the category moves two dummies at once, by
  ``1/σ_a`` down and ``1/σ_b`` up in standardised units.  The certificate itself treats every
  feature as continuous; for a category switch ``a → b`` the script bounds the decrease by
  ``‖(M + I)|δ|‖₂ / √p`` with that two-sparse ``δ`` (the same inequality, a valid bound) and
  compares it with the exact decrease of every switch (exhaustive search) on the sample.

Every attack's decrease is checked against its certified bound (the script stops with an
error if one is ever exceeded; the count is printed).  It prints ONE JSON object with the
numbers of the figures and writes ``docs/figures/certify_nslkdd_features.png`` and
``docs/figures/certify_nslkdd_radius.png``.

Example (``--model /tmp/certify_nslkdd/model.npz`` reuses the trained model; measured on 2
cores shared with other jobs, load average 9-21: training 1168 s, the rest 846 s, most of it
the attacks; ``--epochs 5 --sample 50`` gives a quicker, rougher run)::

    .venv/bin/python scripts/certify_nslkdd.py --workdir /tmp/certify_nslkdd
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from dimplicit import certify
from dimplicit.anomaly.metrics import calibrate, classification_metrics
from dimplicit.backend import get_backend
from dimplicit.gradients import BackwardOptions
from dimplicit.losses import row_rmse
from dimplicit.partition import StepConfig, partition_sums
from dimplicit.solvers import SolverOptions

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
FIGURES = REPO / "docs" / "figures"
# Attack gradients: tight forward and adjoint solves (the default adjoint tolerance, 1e-4,
# is a training setting).
ATTACK = StepConfig(
    "mse",
    certify.TIGHT,
    BackwardOptions("implicit", solver=SolverOptions(tol=1e-10, max_iter=20000)),
)
# Slack of the "bound never violated" check: the solves converge to 1e-12 relative residual.
SLACK = 1e-9


# --------------------------------------------------------------------------------------
# Scores and attacks (model-space rows, float64)
# --------------------------------------------------------------------------------------


def scores(model, U, block: int = 4096) -> np.ndarray:
    """Anomaly scores ``s(u) = ‖ŷ(u) − u‖₂ / √p`` of the rows ``U``, float64, tight solves."""
    U = np.asarray(U, dtype=np.float64)
    out = [row_rmse(certify.outputs(model, U[i : i + block]), U[i : i + block])
           for i in range(0, len(U), block)]  # fmt: skip
    return np.concatenate(out) if out else np.zeros(0)


def score_pgd(model, U, eps, *, mask=None, steps: int = 40, restarts: int = 2, seed=0):
    """Projected sign-gradient descent of the anomaly score in ``‖δ‖∞ ≤ eps``, row by row.

    Input gradients from the implicit backward pass (:func:`score_and_grad`).  Every iterate
    is scored and the best one kept.

    Parameters
    ----------
    model : ImplicitModel
        An autoencoder (model-space rows in, same space out).
    U : array (b × p)
        Model-space rows.
    eps : float or array (b,)
        ℓ∞ radius per row (standardised units).
    mask : array (p,) of bool, optional
        Only these features may move (default: all).
    steps, restarts : int
        Iterations per start; starts (the first at ``δ = 0``, the others uniform in the box).
    seed : int

    Returns
    -------
    delta : ndarray (b × p)
        The best perturbation found per row.
    best : ndarray (b,)
        Its score.
    """
    U = np.asarray(U, dtype=np.float64)
    b, p = U.shape
    m64 = model.astype(get_backend("cpu", "float64"))
    box = np.broadcast_to(np.asarray(eps, dtype=np.float64).reshape(-1, 1), (b, 1))
    keep = np.ones((1, p)) if mask is None else np.asarray(mask, dtype=np.float64)[None, :]
    box = box * keep
    alpha = 2.5 * box / steps
    rng = np.random.default_rng(seed)
    best_d, best_s = np.zeros_like(U), scores(m64, U)
    for r in range(restarts):
        d = np.zeros_like(U) if r == 0 else rng.uniform(-1.0, 1.0, U.shape) * box
        for it in range(steps + 1):
            s, g = score_and_grad(m64, U + d, ATTACK, grad=it < steps)
            better = s < best_s
            best_d[better], best_s[better] = d[better], s[better]
            if it == steps:
                break
            d = np.clip(d - alpha * np.sign(g), -box, box)
    return best_d, best_s


def score_and_grad(model, V, config: StepConfig = ATTACK, grad: bool = True):
    """Scores ``s`` of the rows ``V`` and their gradients ``∂s/∂v`` (b × p), float64.

    ``∂(s²)/∂v = (2/p)(Jᵀ r − r)``: ``partition_sums`` with the ``mse`` loss and the target
    ``V`` held fixed gives ``(2/p) Jᵀ r``; the target's own move adds ``−(2/p) r``.
    """
    Yhat = certify.outputs(model, V, config.forward)
    s = row_rmse(Yhat, V)
    if not grad:
        return s, None
    g = partition_sums(model, V, V, config, want_input_grad=True)["grads"]["U"]
    g = g - (2.0 / V.shape[1]) * (Yhat - V)
    return s, g / (2.0 * np.maximum(s, 1e-300))[:, None]


def feature_attack(model, U, eps: float, feature: int, *, steps: int = 30, grid: int = 21):
    """Lowest score found by moving only ``feature`` by at most ``eps``: PGD + a line search."""
    mask = np.zeros(U.shape[1], dtype=bool)
    mask[feature] = True
    _, best = score_pgd(model, U, eps, mask=mask, steps=steps, restarts=1)
    for t in np.linspace(-eps, eps, grid):
        V = U.copy()
        V[:, feature] += t
        best = np.minimum(best, scores(model, V))
    return best


def pgd_radius(model, U, threshold: float, lo, hi: float = 0.01, *, grow: int = 8,
               iters: int = 6, steps: int = 20):  # fmt: skip
    """Smallest ℓ∞ radius (per row) at which :func:`score_pgd` brings the score under ``t``.

    Tries ``hi, 2 hi, 4 hi, …`` (``grow`` doublings) until the attack succeeds (from small
    radii up: sign steps of a large box overshoot, so a failure there proves little), then bisects
    geometrically between the last failure (at least ``lo``, the certified radius: nothing
    can succeed below it) and the first success; rows never evaded get ``inf``.  The result
    is an upper bound on the true smallest evading radius (the attack may miss), within a
    factor ``(up / lo) ** (1 / 2**iters)`` of the attack's own threshold.

    Returns
    -------
    radius : ndarray (b,)
    tried : list of (eps, score, rows)
        Every attack run, for the bound check.
    """
    b = U.shape[0]
    lo = np.asarray(lo, dtype=np.float64).copy()
    up = np.full(b, np.inf)
    tried = []
    eps = np.maximum(np.full(b, hi), 1.5 * lo)
    for _ in range(grow + 1):
        idx = np.flatnonzero(np.isinf(up))
        if idx.size == 0:
            break
        _, s = score_pgd(model, U[idx], eps[idx], steps=steps, restarts=1)
        tried.append((eps[idx].copy(), s, idx))
        win = s < threshold
        up[idx[win]] = eps[idx[win]]
        lo[idx[~win]] = np.maximum(lo[idx[~win]], eps[idx[~win]])
        eps[idx] *= 2
    idx = np.flatnonzero(np.isfinite(up))
    for _ in range(iters if idx.size else 0):
        mid = np.sqrt(lo[idx] * up[idx])
        _, s = score_pgd(model, U[idx], mid, steps=steps, restarts=1)
        tried.append((mid, s, idx))
        win = s < threshold
        up[idx[win]] = mid[win]
        lo[idx[~win]] = mid[~win]
    return up, tried


# --------------------------------------------------------------------------------------
# Categorical columns
# --------------------------------------------------------------------------------------


def categorical_groups(feature_names) -> dict[str, np.ndarray]:
    """Feature positions of the one-hot dummies of ``protocol_type``, ``service``, ``flag``.

    The protocol names a dummy by its raw value (``tcp``, ``http``, ``SF``): the values are
    looked up in the NSL-KDD vocabularies (names are unique: the preparation checks it).
    """
    from dimplicit.data.schema import NSLKDD_CATEGORIES
    from dimplicit.experiments.szekeres2024 import NSL_CATEGORICAL

    pos = {name: i for i, name in enumerate(feature_names)}
    return {c: np.array([pos[v] for v in NSLKDD_CATEGORIES[c] if v in pos])
            for c in NSL_CATEGORICAL}  # fmt: skip


def switch_bounds(K: np.ndarray, group: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Certified score decrease of every category switch ``a → b`` of one column (g × g).

    A switch moves dummy ``a`` by ``−1/σ_a`` and dummy ``b`` by ``+1/σ_b`` (standardised
    units), so the decrease is at most ``‖K[:, a]/σ_a + K[:, b]/σ_b‖₂ / √p`` with
    ``K = M + I`` (:func:`dimplicit.certify.score_decrease_bound`'s inequality with a
    two-sparse ``|δ|``).  The diagonal (no switch) is 0.
    """
    p = K.shape[0]
    cols = K[:, group] / sigma[group][None, :]
    out = np.linalg.norm(cols[:, :, None] + cols[:, None, :], axis=0) / math.sqrt(p)
    np.fill_diagonal(out, 0.0)
    return out


def switch_attack(model, U, group: np.ndarray, mean: np.ndarray, sigma: np.ndarray):
    """Exact lowest score over every category switch of one column, and the switch used.

    Returns ``(best_score, current, target)`` per row (``current`` and ``target`` index
    ``group``).
    """
    raw = U[:, group] * sigma[group] + mean[group]
    current = np.argmax(raw, axis=1)
    best = np.full(U.shape[0], np.inf)
    target = current.copy()
    for j in range(group.size):
        V = U.copy()
        V[:, group] = (0.0 - mean[group]) / sigma[group]
        V[:, group[j]] = (1.0 - mean[group[j]]) / sigma[group[j]]
        s = scores(model, V)
        s[current == j] = np.inf
        better = s < best
        best[better], target[better] = s[better], j
    return best, current, target


# --------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------


# The training recipe of the dense implicit autoencoder (ReLU, ‖A‖∞ ≤ κ < 1, so the
# certificate applies): the dense-AE recipe chosen on validation data for the earlier
# NSL-KDD study of docs/results.md (hidden 128, Adam 3e-3 with cosine decay, batch 256,
# 20 epochs, training solves at 1e-3).  The published v0/v1/v2 models are layered: their
# ‖A‖∞ is far above 1, which dimplicit.certify refuses.
RECIPE = {"hidden": 128, "kappa": 0.95, "lr": 3e-3, "batch_size": 256, "epochs": 20,
          "tol": 1e-3}  # fmt: skip


def train_model(data, epochs: int, seed: int, kappa=None, hidden=0):
    """Train the dense implicit autoencoder on the normal training rows (:data:`RECIPE`).

    Parameters
    ----------
    data : dimplicit.experiments.szekeres2024.Prepared
    epochs, hidden : int
        0: the recipe's.
    seed : int
    kappa : float, optional
        Bound on ‖A‖∞ (default the recipe's).

    Returns
    -------
    model : ImplicitModel
        With ``meta["training"]``: task, feature names, scaler and recipe, so that it is a
        regular model file for ``dimplicit certify`` / ``dimplicit score``.
    seconds : float
        Wall time of the training call.
    """
    from dimplicit.fit import fit
    from dimplicit.gradients import BackwardOptions
    from dimplicit.model import build_model
    from dimplicit.optim import OptimizerConfig

    r = dict(RECIPE, seed=seed)
    r.update({k: v for k, v in (("epochs", epochs), ("hidden", hidden), ("kappa", kappa)) if v})
    X = data.scaled("train")
    p = X.shape[1]
    model = build_model("ae-dense", p, p, hidden=r["hidden"], kappa=r["kappa"], seed=seed,
                        dtype="float32")  # fmt: skip
    fwd = SolverOptions("picard", tol=r["tol"])
    config = StepConfig("mse", fwd, BackwardOptions("implicit", solver=fwd))
    total = r["epochs"] * math.ceil(len(X) / r["batch_size"])
    opt = OptimizerConfig("adam", lr=r["lr"], schedule="cosine", total_steps=total)
    t0 = time.perf_counter()
    trained, _ = fit(model, X, X, config=config, optimizer=opt, epochs=r["epochs"],
                     batch_size=r["batch_size"], seed=seed)  # fmt: skip
    seconds = time.perf_counter() - t0
    trained.meta["training"] = {
        "task": "autoencode", "feature_names": list(data.feature_names),
        "scaler": {"mean": [float(v) for v in data.mean], "std": [float(v) for v in data.scale]},
        "recipe": {**r, "arch": "ae-dense", "protocol": data.protocol, "train_s": seconds},
    }  # fmt: skip
    return trained, seconds


# --------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------


def _floor(values) -> float:
    """Left edge of a log axis: a third of the smallest positive value (bars of 0 vanish)."""
    pos = [v for v in values if v > 0]
    return min(pos) / 3 if pos else 1e-6


def plot_features(path: Path, feats: list[dict], switches: dict, eps: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(
        1, 2, figsize=(12, 0.32 * len(feats) + 1.8), gridspec_kw={"width_ratios": [2.2, 1]}
    )
    y = np.arange(len(feats))[::-1]
    h = 0.38
    ax.barh(y + h / 2, [f["certified"] for f in feats], h, color="#4c72b0",
            label="certified bound (any row)")  # fmt: skip
    ax.barh(y - h / 2, [f["attack_max"] for f in feats], h, color="#dd8452",
            label="largest decrease found (PGD + line search)")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlim(left=_floor([f[k] for f in feats for k in ("certified", "attack_max")]))
    ax.set_yticks(y, [f"{f['feature']} (εσ = {f['eps_raw']:.3g})" for f in feats], fontsize=8)
    ax.set_xlabel(f"score decrease when one feature moves by ε = {eps:g} σ (raw units in brackets)")
    ax.set_title("Numeric features: top certified score sensitivity", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    cols = list(switches)
    yc = np.arange(len(cols))[::-1]
    bx.barh(yc + h / 2, [switches[c]["certified_median"] for c in cols], h, color="#4c72b0",
            label="certified (median over rows)")  # fmt: skip
    # A switch that can only raise the score has no bar (log axis).
    actual = [max(switches[c]["actual_max"], 1e-300) for c in cols]
    bx.barh(yc - h / 2, actual, h, color="#dd8452",
            label="exact best switch (max over sample)")  # fmt: skip
    bx.set_xscale("log")
    bx.set_xlim(left=_floor([v for c in cols for v in (switches[c]["certified_median"],
                                                       switches[c]["actual_max"])]))  # fmt: skip
    bx.set_yticks(yc, cols, fontsize=9)
    bx.set_xlabel("score decrease of a category switch")
    bx.set_title("One-hot columns: change the category", fontsize=10)
    bx.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_radius(path: Path, cert: np.ndarray, cert_sample: np.ndarray, found: np.ndarray):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.4))
    fin = found[np.isfinite(found)]
    vals = np.concatenate([cert[cert > 0], fin])
    edges = np.logspace(np.log10(vals.min()) - 0.1, np.log10(vals.max()) + 0.1, 45)

    def share(v, n):  # each histogram as a share of its own rows
        return np.full(v.size, 1.0 / n)

    c = cert[cert > 0]
    ax.hist(c, edges, weights=share(c, cert.size), alpha=0.55, color="#4c72b0",
            label=f"certified, all {cert.size} detected attacks")  # fmt: skip
    cs = cert_sample[cert_sample > 0]
    ax.hist(cs, edges, weights=share(cs, cert_sample.size), histtype="step", lw=1.5,
            color="#1f3b73", label=f"certified, the {cert_sample.size} attacked rows")  # fmt: skip
    ax.hist(fin, edges, weights=share(fin, found.size), alpha=0.7, color="#dd8452",
            label=f"PGD, the {fin.size} of {found.size} attacked rows it evaded")  # fmt: skip
    ax.axvline(np.median(cert), color="#1f3b73", ls="--", lw=1)
    if fin.size:
        ax.axvline(np.median(fin), color="#b3541e", ls="--", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("ℓ∞ radius that brings the score under the threshold (standardised units)")
    ax.set_ylabel("share of rows (dashed: medians)")
    ax.set_title("NSL-KDD autoencoder: certified radius vs radius found by PGD", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


def _q(v) -> dict:
    v = np.asarray(v, dtype=np.float64)
    if v.size == 0:
        return {}
    return {"min": float(v.min()), "median": float(np.median(v)), "max": float(v.max()),
            "mean": float(v.mean())}  # fmt: skip


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA,
                    help="folder holding nsl-kdd/KDDTrain+.txt and KDDTest+.txt")  # fmt: skip
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/certify_nslkdd"),
                    help="the trained model.npz goes here")  # fmt: skip
    ap.add_argument(
        "--model",
        type=Path,
        default=None,
        help="load this model.npz (written by an earlier run) instead of training",
    )
    ap.add_argument("--epochs", type=int, default=0, help="training epochs (0: the recipe's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hidden", type=int, default=0, help="hidden neurons (0: the recipe's)")
    ap.add_argument(
        "--kappa", type=float, default=None, help="bound on ‖A‖∞ (default: the recipe's 0.95)"
    )
    ap.add_argument(
        "--eps",
        type=float,
        default=0.1,
        help="ℓ∞ perturbation of the per-feature study (standardised units)",
    )
    ap.add_argument(
        "--sample",
        type=int,
        default=200,
        help="detected attack rows attacked with PGD (random, seeded)",
    )
    ap.add_argument("--top", type=int, default=15, help="features shown in the figure")
    ap.add_argument("--steps", type=int, default=30, help="PGD steps per attack at --eps")
    ap.add_argument("--radius-steps", type=int, default=20,
                    help="PGD steps per attack of the radius search")  # fmt: skip
    ap.add_argument("--figures", type=Path, default=FIGURES)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    with threadpool_limits(args.threads):
        result = run(args)
    print(json.dumps(result))
    return result


def run(args) -> dict:
    from dimplicit.experiments.szekeres2024 import prepare
    from dimplicit.model import ImplicitModel

    t_start = time.perf_counter()
    args.workdir.mkdir(parents=True, exist_ok=True)
    # The protocol's NSL-KDD preparation; "clean" drops the label-derived `level` column.
    data = prepare("nsl-kdd", args.data, "clean")
    names = list(data.feature_names)
    mean = np.asarray(data.mean, dtype=np.float64)
    # The scaler's σ (1 for the columns constant on normal training rows): one standardised
    # unit of feature l is sigma[l] raw units.
    sigma = np.asarray(data.scale, dtype=np.float64)
    constant = np.std(data.X_train, axis=0) == 0
    groups = categorical_groups(names)
    dummy = np.zeros(len(names), dtype=bool)
    for g in groups.values():
        dummy[g] = True

    train_s = None
    if args.model is not None:
        model = ImplicitModel.load(args.model)
        train_s = model.meta.get("training", {}).get("recipe", {}).get("train_s")
    else:
        model, train_s = train_model(data, args.epochs, args.seed, args.kappa, args.hidden)
    p = model.n_inputs

    # Calibration on validation only (float64 tight scores: the certificate's scores).
    t0 = time.perf_counter()
    X_val, X_test = data.scaled("val"), data.scaled("test")
    s_val = scores(model, X_val)
    s_test = scores(model, X_test)
    score_s = time.perf_counter() - t0
    cal = calibrate(s_val, data.y_val)
    model.meta["calibration"] = cal.to_dict()
    if args.model is None:
        model.save(args.workdir / "model.npz")
    t_raw = cal.mean + cal.threshold * (cal.std if cal.std > 0 else 1.0)
    flagged = s_test > t_raw
    test_metrics = classification_metrics(data.y_test, flagged, s_test)
    det = np.flatnonzero(data.y_test & flagged)
    U_det, s_det = X_test[det].astype(np.float64), s_test[det]
    margin = s_det - t_raw

    # The certificate.
    M = certify.sensitivity_bound(model)
    total, per = certify.score_decrease_bound(model, args.eps, M)
    L_all, L = total / args.eps, per / args.eps  # decrease per standardised unit
    K = M + np.eye(p)
    r_cert = margin / L_all
    r_feat = margin[:, None] / L[None, :]  # single-feature certified radius per row

    rng = np.random.default_rng(args.seed)
    pick = np.sort(rng.choice(det.size, size=min(args.sample, det.size), replace=False))
    U_s, s_s = U_det[pick], s_det[pick]
    violations, checks = 0, 0

    def check(decrease, bound):
        nonlocal violations, checks
        decrease, bound = np.broadcast_arrays(np.asarray(decrease), np.asarray(bound))
        checks += decrease.size
        violations += int((decrease > bound + SLACK).sum())

    # Per feature, certified, every feature: the bound at eps (the same for every row), the
    # share of detected rows it certifies to stay detected, the median single-feature radius.
    share = np.mean(margin[:, None] > args.eps * L[None, :], axis=0)
    r_feat_median = np.median(r_feat, axis=0)
    all_features = {names[j]: {"certified": float(args.eps * L[j]),
                               "certified_detected_share": float(share[j]),
                               "certified_radius_median": float(r_feat_median[j])}
                    for j in range(p)}  # fmt: skip

    # Attacks on the top numeric features by certified bound (a dummy cannot move alone: the
    # one-hot columns are attacked by category switches below).
    t0 = time.perf_counter()
    numeric = np.flatnonzero(~dummy)
    order = numeric[np.argsort(-L[numeric], kind="stable")][: args.top]
    feats = []
    for j in order:
        best = feature_attack(model, U_s, args.eps, int(j), steps=args.steps)
        dec = s_s - best
        check(dec, args.eps * L[j])
        feats.append({
            "feature": names[j], "dummy": bool(dummy[j]), "sigma_raw": float(sigma[j]),
            "constant_on_normal_rows": bool(constant[j]), "eps_raw": float(args.eps * sigma[j]),
            "certified": float(args.eps * L[j]),
            # Raw units mean something for numeric features only (a dummy is 0 or 1).
            "certified_per_raw_unit": None if dummy[j] else float(L[j] / sigma[j]),
            "certified_detected_share": float(share[j]),
            "certified_radius_median": float(r_feat_median[j]),
            "attack_max": float(dec.max()), "attack_median": float(np.median(dec)),
            "tightness_max": float(dec.max() / (args.eps * L[j])),
            "tightness_median": float(np.median(dec) / (args.eps * L[j])),
            "attack_evaded": int((best < t_raw).sum()),
        })  # fmt: skip
    feature_s = time.perf_counter() - t0

    # Categorical columns: category switches (bound per row vs exact best switch).
    t0 = time.perf_counter()
    switches = {}
    for c, g in groups.items():
        B = switch_bounds(K, g, sigma)
        cur_all = np.argmax(U_det[:, g] * sigma[g] + mean[g], axis=1)
        cert_all = B[cur_all].max(axis=1)  # worst target per detected row
        best, cur, tgt = switch_attack(model, U_s, g, mean, sigma)
        dec = s_s - best
        check(dec, B[cur, tgt])
        switches[c] = {
            "dummies": int(g.size), "certified_min": float(cert_all.min()),
            "certified_median": float(np.median(cert_all)),
            "certified_detected_share": float(np.mean(margin > cert_all)),
            "actual_max": float(dec.max()), "actual_median": float(np.median(dec)),
            "actual_evaded_share": float(np.mean(best < t_raw)),
            "tightness_median": float(np.median(np.maximum(dec, 0) / B[cur, tgt])),
            "tightness_max": float((np.maximum(dec, 0) / B[cur, tgt]).max()),
        }  # fmt: skip
    switch_s = time.perf_counter() - t0

    # All features: the radius.  PGD at eps and the bisection for the PGD radius.
    t0 = time.perf_counter()
    _, best_eps = score_pgd(model, U_s, args.eps, steps=args.steps)
    dec_eps = s_s - best_eps
    check(dec_eps, args.eps * L_all)
    r_found, tried = pgd_radius(model, U_s, t_raw, r_cert[pick], steps=args.radius_steps)
    for e, s, idx in tried:
        check(s_s[idx] - s, e * L_all)
    radius_s = time.perf_counter() - t0
    if violations:
        raise AssertionError(f"{violations} of {checks} attacks beat the certified bound")

    args.figures.mkdir(parents=True, exist_ok=True)
    fig_f = args.figures / "certify_nslkdd_features.png"
    fig_r = args.figures / "certify_nslkdd_radius.png"
    plot_features(fig_f, feats, switches, args.eps)
    plot_radius(fig_r, r_cert, r_cert[pick], r_found)

    fin = np.isfinite(r_found)
    return {
        "model": {
            "arch": "ae-dense",
            "hidden": model.n_hidden,
            "p": p,
            "rho_bound": certify.check_certifiable(model),
            "train_s": train_s,
            "loaded_from": str(args.model) if args.model else None,
        },
        "calibration": {**cal.to_dict(), "raw_threshold": float(t_raw)},
        "test": {
            k: test_metrics[k]
            for k in ("f1", "recall", "precision", "roc_auc", "n", "n_anomalous", "n_flagged")
        },
        "detected_attacks": int(det.size),
        "score_detected": _q(s_det),
        "margin_detected": _q(margin),
        "bound": {
            "max_entry": float(M.max()),
            "row_sum_max": float(M.sum(axis=1).max()),
            "decrease_per_unit_all_features": float(L_all),
            "decrease_per_unit_per_feature": _q(L),
        },
        "features": {
            "n": p,
            "dummies": int(dummy.sum()),
            "numeric": int((~dummy).sum()),
            "groups": {c: int(g.size) for c, g in groups.items()},
        },
        "eps": args.eps,
        "per_feature_top_numeric": feats,
        "per_feature_certified": {
            "numeric": _q(args.eps * L[~dummy]),
            "dummies": _q(args.eps * L[dummy]),
            "certified_detected_share": _q(share),
            "all": all_features,
        },
        "category_switch": switches,
        "sample_rows": int(pick.size),
        "all_features_at_eps": {
            "certified": float(args.eps * L_all),
            "certified_detected_share": float(np.mean(margin > args.eps * L_all)),
            "attack_decrease": _q(dec_eps),
            "tightness": _q(dec_eps / (args.eps * L_all)),
            "decrease_over_score": _q(dec_eps / s_s),
            "attack_evaded": int((best_eps < t_raw).sum()),
        },
        "radius": {
            "certified_all_detected": _q(r_cert),
            "certified_sample": _q(r_cert[pick]),
            "pgd_sample": _q(r_found[fin]),
            "pgd_evaded": int(fin.sum()),
            "pgd_tried_up_to": float(max(e.max() for e, _, _ in tried)),
            "ratio_certified_over_pgd": _q(r_cert[pick][fin] / r_found[fin]),
        },
        "bound_checks": {"attacks_checked": checks, "violations": violations},
        "figures": [
            str(fig_f.relative_to(REPO)) if fig_f.is_relative_to(REPO) else str(fig_f),
            str(fig_r.relative_to(REPO)) if fig_r.is_relative_to(REPO) else str(fig_r),
        ],
        "seconds": {
            "train": train_s,
            "score": score_s,
            "per_feature": feature_s,
            "category_switch": switch_s,
            "radius": radius_s,
            "total": time.perf_counter() - t_start,
        },
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }


if __name__ == "__main__":
    main()
