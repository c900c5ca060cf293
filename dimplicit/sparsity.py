"""Feature selection: the group-lasso proximal step on the input columns, and its read-outs.

Input feature ``j`` reaches the model only through column ``j`` of the input matrices: ``B[:, j]``
(into the hidden state) and ``D[:, j]`` (straight to the output).  When that whole column of
``[B; D]`` is zero, feature ``j`` is not used at all (El Ghaoui et al., *Implicit Deep
Learning*, feature elimination).  Adding ``λ Σ_j ‖[B; D][:, j]‖₂`` to the loss drives whole
columns to exactly zero; it is applied as its proximal operator after every optimizer step
(:func:`dimplicit.optim.apply_update`, ``OptimizerConfig.group_lasso``):

    [B; D][:, j]  ←  max(0, 1 − λ·lr / ‖[B; D][:, j]‖₂) · [B; D][:, j].

``D`` is part of each group because a feature with ``B[:, j] = 0`` but ``D[:, j] ≠ 0`` is still
used; for the models whose ``D`` is masked to zero (the autoencoders) the groups are the columns
of ``B`` alone.  Structural zeros (masks) stay zero: the step only rescales a column.

Why a proximal step and not a projection onto an ℓ1,2 (or ℓ1,∞) ball: the prox is closed
form, costs one pass over ``B`` and ``D``, and leaves *exact* zeros, while a constraint radius
has no natural scale to choose across data sets.  Why after the optimizer step: with plain SGD
this is proximal gradient descent (ISTA) on ``loss + λ Σ_j ‖·‖₂``, whose fixed points are the
penalised problem's stationary points.  With momentum or Adam the step is *decoupled*, as
AdamW's weight decay: the threshold is ``λ·lr`` whatever Adam's per-coordinate scaling, so with
Adam λ is compared with the size of a normalised update (a column stays at zero while its
Adam step is shorter than ``λ·lr``, i.e. while its gradient is weak or noisy), not with the
raw gradient.  The exact prox in Adam's diagonal metric has no closed form.  The step touches
only ``B`` and ``D`` and the well-posedness projection only ``A``, so the two commute.
"""

from __future__ import annotations

import numpy as np

from dimplicit.backend import array_module, to_host


def group_lasso_prox(B, D, threshold: float):
    """The proximal operator of ``threshold · Σ_j ‖[B; D][:, j]‖₂`` (block soft-thresholding).

    Parameters
    ----------
    B : array (n × p)
    D : array (q × p) or None
        Not modified.  None: the groups are the columns of ``B`` alone.
    threshold : float
        ``λ · lr`` of this step (≥ 0).

    Returns
    -------
    B, D : arrays
        New arrays of the same dtypes; every column whose norm is ≤ ``threshold`` is exactly
        zero, the others are shrunk towards zero by ``threshold`` in norm.
    """
    if not threshold >= 0:
        raise ValueError(f"threshold must be ≥ 0, got {threshold}")
    xp = array_module(B)
    sq = (B * B).sum(axis=0)
    if D is not None:
        sq = sq + (D * D).sum(axis=0)
    norm = xp.sqrt(sq)
    # 1 − t/‖c‖ without dividing by zero: zero columns get scale 0 and stay zero.
    scale = xp.where(norm > threshold, 1 - threshold / xp.where(norm > 0, norm, 1), 0)
    scale = scale.astype(B.dtype, copy=False)
    new_B = B * scale[None, :]
    new_D = None if D is None else D * scale.astype(D.dtype, copy=False)[None, :]
    return new_B, new_D


def column_norms(model) -> np.ndarray:
    """‖[B; D][:, j]‖₂ of every input feature ``j`` of ``model`` (float64, on the host).

    A zero norm means the feature is not used by the model at all.
    """
    B = to_host(model.params["B"]).astype(np.float64)
    D = to_host(model.params["D"]).astype(np.float64)
    return np.sqrt((B * B).sum(axis=0) + (D * D).sum(axis=0))


def selected_features(norms, tol: float = 0.0) -> np.ndarray:
    """Indices of the features whose column norm exceeds ``tol`` (the group-lasso step leaves
    exact zeros, so the default ``tol = 0`` separates used from unused features)."""
    return np.flatnonzero(np.asarray(norms) > tol)


def feature_report(model, feature_names=None) -> dict:
    """A short JSON-able summary of which input features ``model`` uses.

    Parameters
    ----------
    model : ImplicitModel
    feature_names : list of str, optional
        Default: ``model.meta["training"]["feature_names"]``, else ``x0, x1, ...``.

    Returns
    -------
    dict
        ``n_features``, ``n_selected``, ``selected`` (names of the features with a non-zero
        column, by decreasing norm) and ``column_norms`` (name → norm, in input order).
    """
    norms = column_norms(model)
    names = feature_names or model.meta.get("training", {}).get("feature_names")
    names = list(names) if names else [f"x{j}" for j in range(len(norms))]
    keep = selected_features(norms)
    order = keep[np.argsort(-norms[keep], kind="stable")]
    return {
        "n_features": len(norms),
        "n_selected": len(keep),
        "selected": [names[j] for j in order],
        "column_norms": {n: float(v) for n, v in zip(names, norms, strict=True)},
    }


def support_recovery(selected, support, n_features: int) -> dict:
    """Precision and recall of ``selected`` feature indices against the true ``support``."""
    sel = np.zeros(n_features, dtype=bool)
    sel[np.asarray(selected, dtype=int)] = True
    true = np.zeros(n_features, dtype=bool)
    true[np.asarray(support, dtype=int)] = True
    hits = int((sel & true).sum())
    return {
        "precision": hits / int(sel.sum()) if sel.any() else 0.0,
        "recall": hits / int(true.sum()) if true.any() else 1.0,
        "n_selected": int(sel.sum()),
        "n_true": int(true.sum()),
    }


def column_sparse_problem(
    n_samples: int = 400,
    n_inputs: int = 50,
    n_hidden: int = 20,
    n_outputs: int = 100,
    n_used: int = 10,
    *,
    noise: float = 0.0,
    seed: int = 0,
):
    """Data from a random well-posed implicit model whose ``[B; D]`` is column-sparse.

    The generating ("teacher") model is a dense ReLU model with ‖A‖∞ = 0.5; only ``n_used``
    randomly chosen inputs have non-zero columns in ``B`` and ``D``.  Inputs are standard
    normal; outputs are the teacher's, plus Gaussian noise of standard deviation ``noise``
    times each output's own standard deviation.

    Returns
    -------
    U : ndarray (n_samples × n_inputs), float64
    Y : ndarray (n_samples × n_outputs), float64
    teacher : ImplicitModel
    support : ndarray of int
        The sorted indices of the used inputs.
    """
    from dimplicit.forward import predict
    from dimplicit.model import dense_model
    from dimplicit.solvers import SolverOptions

    if not 0 < n_used <= n_inputs:
        raise ValueError(f"n_used must be in 1..{n_inputs}, got {n_used}")
    rng = np.random.default_rng(seed)
    teacher = dense_model(n_inputs, n_hidden, n_outputs, seed=seed, dtype="float64")
    support = np.sort(rng.choice(n_inputs, n_used, replace=False))
    keep = np.zeros(n_inputs)
    keep[support] = 1.0
    # The used columns are rescaled so that the inputs' total weight does not depend on how
    # many of them are used.
    gain = np.sqrt(n_inputs / n_used)
    for k in ("B", "D"):
        teacher.params[k] = teacher.params[k] * keep[None, :] * gain
    teacher.params["b_x"] = 0.1 * rng.standard_normal(n_hidden)
    U = rng.standard_normal((n_samples, n_inputs))
    Y, _, stats = predict(teacher, U, SolverOptions("picard", tol=1e-10, max_iter=1000))
    if stats.n_unconverged:
        raise RuntimeError("the teacher's fixed point did not converge")
    Y = np.asarray(Y, dtype=np.float64)
    if noise:
        Y = Y + noise * Y.std(axis=0, keepdims=True) * rng.standard_normal(Y.shape)
    return U, Y, teacher, support
