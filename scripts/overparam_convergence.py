"""Over-parameterised convergence of a ReLU implicit network (Gao et al., ICLR 2022).

Full-batch gradient descent with the implicit (adjoint) gradient on the model of
:func:`dimplicit.studies.gao_model` (``z = relu((γ/√m) Ã z + W̃ x)``, ``ŷ = ũᵀ z / √m``, all of
Ã, W̃, ũ trained, square loss ``½ Σ (ŷ − y)²``), for several widths m on one fixed data set:
n points drawn uniformly on the unit sphere of R^d, labels ``sin(3 aᵀx)`` for a fixed random
unit vector a, standardised.  One step size for every width, ``η = lr_scale / max_m λ_max(H_m(0))``
(H: the neural-tangent Gram matrix at initialisation, :func:`dimplicit.studies.ntk_gram`).

For each width the script records the loss curve, the log-linear fit
(:func:`dimplicit.studies.linear_rate`), λ_min and λ_max of H at the start and the end, the
relative change ‖H(T) − H(0)‖₂ / ‖H(0)‖₂, and the asymptotic rate the NTK predicts,
``−2 log10(1 − η λ_min(H(0)))`` decades per step.  Prints one JSON object, writes it to
``--out`` and the figure to ``--figure``.

    .venv/bin/python scripts/overparam_convergence.py     # n = 64, d = 16: minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from dimplicit.studies import gao_gradient_descent, gao_model, is_linear, linear_rate, ntk_gram


def make_data(n: int, d: int, seed: int):
    """``n`` points uniform on the unit sphere of R^d and standardised labels ``sin(3 aᵀx)``."""
    rng = np.random.default_rng(seed)
    U = rng.standard_normal((n, d))
    U /= np.linalg.norm(U, axis=1, keepdims=True)
    a = rng.standard_normal(d)
    a /= np.linalg.norm(a)
    y = np.sin(3.0 * U @ a)
    return U, (y - y.mean()) / y.std()


def run(args) -> dict:
    U, y = make_data(args.n, args.d, args.data_seed)
    widths = [int(round(f * args.n)) for f in args.width_factors]
    models = {m: gao_model(args.d, m, gamma=args.gamma, seed=args.seed) for m in widths}
    grams = {m: ntk_gram(models[m], U, gamma=args.gamma) for m in widths}
    lam_max = max(float(np.linalg.eigvalsh(H)[-1]) for H in grams.values())
    lr = args.lr_scale / lam_max
    rows = []
    for m in widths:
        t0 = time.perf_counter()
        trained, losses = gao_gradient_descent(
            models[m], U, y, lr=lr, iterations=args.iterations, gamma=args.gamma
        )
        seconds = time.perf_counter() - t0
        H0, HT = grams[m], ntk_gram(trained, U, gamma=args.gamma)
        ev0, evT = np.linalg.eigvalsh(H0), np.linalg.eigvalsh(HT)
        fit = linear_rate(losses, floor_ratio=args.floor_ratio)
        ntk_rate = float(-2.0 * np.log10(1.0 - lr * ev0[0]))
        row = {
            "width": m,
            "width_over_n": m / args.n,
            "lambda_min_H0": float(ev0[0]),
            "lambda_max_H0": float(ev0[-1]),
            "lambda_min_HT": float(evT[0]),
            "gram_change": float(np.linalg.norm(HT - H0, 2) / np.linalg.norm(H0, 2)),
            "ntk_rate": ntk_rate,
            **fit,
            "late_over_ntk": fit["late_rate"] / ntk_rate if ntk_rate > 0 else float("nan"),
            "A_norm2_end": float(np.linalg.norm(trained.params["A"], 2)),
            "iterations_run": int(len(losses) - 1),
            "seconds": round(seconds, 1),
        }
        # The study's criterion (docs/studies.md): log-linear fit R² ≥ 0.98, loss below 1e-6 of
        # its start, and the late rate at least half of what the initial NTK predicts.
        row["linear"] = bool(is_linear(fit) and row["late_over_ntk"] >= 0.5)
        row["losses"] = [float(v) for v in losses]
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "losses"}), flush=True)
    return {
        "n": args.n, "d": args.d, "gamma": args.gamma, "lr": lr, "lr_scale": args.lr_scale,
        "iterations": args.iterations, "seed": args.seed, "data_seed": args.data_seed,
        "floor_ratio": args.floor_ratio, "widths": rows,
    }  # fmt: skip


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx, cx) = plt.subplots(1, 3, figsize=(15, 4.2))
    cmap = plt.get_cmap("viridis")
    rows = res["widths"]
    for i, r in enumerate(rows):
        L = np.asarray(r["losses"])
        style = "-" if r["linear"] else "--"
        ax.semilogy(L / L[0], style, color=cmap(i / max(1, len(rows) - 1)),
                    label=f"m = {r['width']} ({r['width_over_n']:g} n)")  # fmt: skip
    ax.set_xlabel("gradient-descent iteration")
    ax.set_ylabel("training loss / initial loss")
    ax.set_title(f"Gao et al. model, n = {res['n']}, d = {res['d']}, γ = {res['gamma']}, "
                 f"η = {res['lr']:.3g} (dashed: not linear)", fontsize=9)  # fmt: skip
    ax.legend(fontsize=8)
    ax.grid(True, which="major", alpha=0.3)
    m = [r["width"] for r in rows]
    bx.plot(m, [r["rate"] for r in rows], "o-", label="fitted rate (whole run)")
    bx.plot(m, [r["late_rate"] for r in rows], "s-", label="late rate (last quarter)")
    bx.plot(m, [r["ntk_rate"] for r in rows], "k--", label="NTK: −2 log10(1 − η λ_min(H(0)))")
    bx.set_ylabel("decades of loss per iteration")
    bx.legend(fontsize=8)
    cx.plot(m, [r["gram_change"] for r in rows], "o-", label="‖H(T) − H(0)‖₂ / ‖H(0)‖₂")
    cx.plot(m, [1 - r["r2"] for r in rows], "s-", label="1 − R² of the log-linear fit")
    cx.set_yscale("log")
    cx.legend(fontsize=8)
    for a in (bx, cx):
        a.set_xscale("log", base=2)
        a.set_xticks(m, [str(v) for v in m])
        a.minorticks_off()
        a.set_xlabel("width m")
        a.grid(True, alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64, help="samples (default: 64)")
    ap.add_argument("--d", type=int, default=16, help="input dimension (default: 16)")
    ap.add_argument("--width-factors", type=lambda s: [float(v) for v in s.split(",")],
                    default=[0.25, 0.5, 1, 2, 4, 8],
                    help="widths as multiples of n (default: 0.25,0.5,1,2,4,8)")  # fmt: skip
    ap.add_argument("--gamma", type=float, default=0.2, help="factor γ of A (default: 0.2)")
    ap.add_argument("--lr-scale", type=float, default=1.0,
                    help="η = LR_SCALE / max λ_max(H(0)) (default: 1)")  # fmt: skip
    ap.add_argument("--iterations", type=int, default=1500, help="GD steps (default: 1500)")
    ap.add_argument("--floor-ratio", type=float, default=1e-10,
                    help="fit the rate only down to this fraction of the initial loss")  # fmt: skip
    ap.add_argument("--seed", type=int, default=0, help="initialisation seed (default: 0)")
    ap.add_argument("--data-seed", type=int, default=0, help="data seed (default: 0)")
    ap.add_argument("--out", type=Path, default=Path("runs/overparam/results.json"))
    ap.add_argument("--figure", type=Path, default=Path("docs/figures/overparam_convergence.png"))
    ap.add_argument("--replot", action="store_true", help="only redraw the figure from --out")
    args = ap.parse_args()
    if args.replot:
        plot(json.loads(args.out.read_text()), args.figure)
        return
    res = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res))
    plot(res, args.figure)
    summary = {k: v for k, v in res.items() if k != "widths"}
    summary["widths"] = [{k: v for k, v in r.items() if k != "losses"} for r in res["widths"]]
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
