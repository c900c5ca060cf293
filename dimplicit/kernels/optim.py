"""Optimizer kernels: an Adam or momentum-SGD update as one compiled pass per parameter.

NumPy evaluates an update as a chain of whole-array operations, each a pass over memory (Adam:
eleven, through a scratch array).  A kernel reads ``param``, ``g`` and the state once and
writes the new state and parameter once, doing per element the same operations in the same
order on scalars of the arrays' dtype (Python floats rounded to it first, as NumPy does with a
Python scalar), so the result is bitwise NumPy's.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True, error_model="numpy")
def adam_update(param, g, m_old, v_old, b1, b2, eps, step_size, bias2, m, v, p):
    """Adam on flat arrays of one dtype: ``m``, ``v`` and ``p`` get the new state and param.

    Parameters
    ----------
    param, g, m_old, v_old : 1-D arrays
        The parameter, its gradient and Adam's moments; not modified.
    b1, b2, eps : float
        β₁, β₂, ε.
    step_size : float
        ``lr / (1 − β₁ᵗ)``.
    bias2 : float
        ``1 − β₂ᵗ``.
    m, v, p : 1-D arrays
        Outputs (may not alias the inputs).

    Notes
    -----
    Per element, in the dtype of the arrays: ``m = β₁ m + (1 − β₁) g``,
    ``v = β₂ v + (1 − β₂) g²``, ``p = param − step_size · m / (√(v / bias2) + ε)``, the
    order of :func:`dimplicit.optim._adam`'s NumPy path (and of the textbook expression).
    """
    t = param.dtype.type
    b1_, c1 = t(b1), t(1 - b1)
    b2_, c2 = t(b2), t(1 - b2)
    eps_, step_, bias2_ = t(eps), t(step_size), t(bias2)
    for i in range(param.shape[0]):
        gi = g[i]
        mi = m_old[i] * b1_ + gi * c1
        vi = v_old[i] * b2_ + (gi * gi) * c2
        m[i] = mi
        v[i] = vi
        p[i] = param[i] - (mi * step_) / (np.sqrt(vi / bias2_) + eps_)


@njit(cache=True, nogil=True, error_model="numpy")
def momentum_update(param, g, m_old, momentum, nesterov, lr, m, p):
    """SGD with (Nesterov) momentum on flat arrays of one dtype, into ``m`` and ``p``.

    Per element: ``m = μ m + g``; ``p = param − lr · (g + μ m if nesterov else m)``.
    """
    t = param.dtype.type
    mu, lr_ = t(momentum), t(lr)
    for i in range(param.shape[0]):
        gi = g[i]
        mi = mu * m_old[i] + gi
        m[i] = mi
        d = gi + mu * mi if nesterov else mi
        p[i] = param[i] - lr_ * d
