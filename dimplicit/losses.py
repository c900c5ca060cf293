"""Losses as *sums* over the rows of a block, with their gradient ``G_Y = ∂L/∂Ŷ``.

Sums (not means) make the reduction independent of how rows are split into partitions:
the trainer divides by the global row count once, after the reduction (docs/design.md §3).
Per sample, ``mse`` and ``bce`` average over the outputs, ``cross_entropy`` is the usual
negative log-likelihood of the softmax.
"""

from __future__ import annotations

from dimplicit.backend import array_module

LOSSES = ("mse", "cross_entropy", "bce")


def loss_and_grad(name: str, Yhat, Y):
    """Return ``(loss_sum, G_Y)`` for a block.

    Parameters
    ----------
    name : {"mse", "cross_entropy", "bce"}
    Yhat : array (b × q)
        Predictions (logits for ``cross_entropy`` and ``bce``).
    Y : array
        Targets: (b × q) for ``mse``/``bce``; integer class indices (b,) or one-hot (b × q)
        for ``cross_entropy``.

    Returns
    -------
    loss_sum : float-like 0-d array
    G_Y : array (b × q)
    """
    xp = array_module(Yhat)
    b, q = Yhat.shape
    if name == "mse":
        R = Yhat - Y
        return mse_sum((R * R).sum(), q), R * (2.0 / q)
    if name == "cross_entropy":
        onehot = _onehot(Y, q, Yhat.dtype, xp)
        Zs = Yhat - Yhat.max(axis=1, keepdims=True)  # stable log-softmax
        logsum = xp.log(xp.exp(Zs).sum(axis=1, keepdims=True))
        logp = Zs - logsum
        P = xp.exp(logp)
        return -(onehot * logp).sum(), P - onehot
    if name == "bce":
        Yb = Y.reshape(b, q).astype(Yhat.dtype)
        # softplus(z) − y z, written to avoid overflow for large |z|
        loss = xp.maximum(Yhat, 0) - Yhat * Yb + xp.log1p(xp.exp(-xp.abs(Yhat)))
        sig = 0.5 * (1 + xp.tanh(0.5 * Yhat))
        return loss.sum() / q, (sig - Yb) / q
    raise ValueError(f"unknown loss {name!r}; choose from {', '.join(LOSSES)}")


def loss_sum(name: str, Yhat, Y):
    """The loss sum of :func:`loss_and_grad` alone, bitwise, without the gradient (validation)."""
    if name == "mse":
        R = Yhat - Y
        return mse_sum((R * R).sum(), Yhat.shape[1])
    return loss_and_grad(name, Yhat, Y)[0]


def mse_sum(sse, q: int):
    """The ``mse`` loss sum from ``sse = Σ (Ŷ − Y)²`` over ``q`` outputs (the per-sample mean over
    the outputs, summed over the rows): for a caller that needs ``sse`` itself too."""
    return sse / q


def _onehot(Y, q, dtype, xp):
    if Y.ndim == 2 and Y.shape[1] == q:
        return Y.astype(dtype)
    idx = Y.reshape(-1).astype(xp.int64)
    if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= q):
        raise ValueError(f"class labels must be in [0, {q}), got range [{idx.min()}, {idx.max()}]")
    out = xp.zeros((idx.size, q), dtype=dtype)
    out[xp.arange(idx.size), idx] = 1
    return out


def row_rmse(Yhat, Y):
    """Per-row root-mean-square error (the autoencoder's anomaly score)."""
    return residual_rmse(Yhat - Y)


def residual_rmse(R):
    """Per-row root-mean-square of the errors ``R = Ŷ − Y`` (:func:`row_rmse` given ``R``)."""
    xp = array_module(R)
    return xp.sqrt(xp.einsum("ij,ij->i", R, R) / R.shape[1])
