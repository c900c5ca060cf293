"""The implicit model: weights, structure masks, activation; builders; save/load without pickle.

Batch-first notation (docs/design.md §1)::

    Z = X Aᵀ + U Bᵀ + b_x      X = φ(Z)      Ŷ = X Cᵀ + U Dᵀ + b_y

Weights live in a plain ``dict`` (``PARAM_NAMES`` order) so they travel cheaply between Dask
tasks and into ``.npz`` checkpoints; masks are 0/1 arrays of the same shapes (``None`` = free).

A model may also carry a trainable *gate* (the "v2" autoencoders of Szekeres & Izsák 2024):
``beta`` (n,), with the mask ``masks["beta"]`` marking the gated neurons, whose output is
``σ(β_i) φ(z_i)`` instead of ``φ(z_i)``::

    X = s ⊙ φ(Z),   s_i = σ(β_i) for a gated neuron, 1 (exactly: not computed) otherwise.

:func:`param_names` lists the parameters a model has (``PARAM_NAMES``, then ``beta`` if
gated); code that walks the weights uses it, so ungated models behave bit for bit as before.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from dimplicit.activations import Activation, GatedActivation
from dimplicit.atomic import write_file
from dimplicit.backend import array_module, to_host
from dimplicit.structure import BlockStructure

# Fixed order: also the order hashed by :func:`weights_sha256`.
PARAM_NAMES = ("A", "B", "C", "D", "b_x", "b_y")
MATRICES = ("A", "B", "C", "D")
# The optional gate parameter (gated "v2" models only); it is not a matrix (no weight decay).
GATE = "beta"
# Version 2 files hold a gate; ungated models are still written as version 1, so files of
# models without a gate are unchanged and older readers refuse gated files instead of
# silently dropping the gate.
FORMAT_VERSION = 2


def param_names(params) -> tuple[str, ...]:
    """The names of the parameters in ``params``: ``PARAM_NAMES``, then ``"beta"`` if gated."""
    return (*PARAM_NAMES, GATE) if GATE in params else PARAM_NAMES


def sigmoid(x):
    """σ(x) = 1 / (1 + e^(−x)), overflow-free (the form used by the ``sigmoid`` activation)."""
    xp = array_module(x)
    return 0.5 * (1 + xp.tanh(0.5 * x))


@dataclass
class ImplicitModel:
    """An implicit network ``x = φ(Ax + Bu + b_x)``, ``ŷ = Cx + Du + b_y``.

    Attributes
    ----------
    params : dict[str, array]
        ``A`` (n×n), ``B`` (n×p), ``C`` (q×n), ``D`` (q×p), ``b_x`` (n,), ``b_y`` (q,), and
        optionally ``beta`` (n,): the gate logits (see the module docstring).
    activation : Activation
        φ, one name or one per hidden neuron (without the gate: see :attr:`phi`).
    masks : dict[str, array]
        Optional 0/1 structure masks for ``A``, ``B``, ``C``, ``D``, and ``beta`` (the gated
        neurons); missing = all free (a ``beta`` without a mask gates every neuron).
    kappa : float or None
        Radius of the row-wise ℓ1 constraint on ``A`` kept during training (None: no constraint).
    meta : dict
        JSON-serialisable description (builder, widths, ...), saved with the model.
    """

    params: dict
    activation: Activation
    masks: dict = field(default_factory=dict)
    kappa: float | None = 0.95
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        missing = [k for k in PARAM_NAMES if k not in self.params]
        if missing:
            raise ValueError(f"model params missing {missing}")
        n, p, q = self.n_hidden, self.n_inputs, self.n_outputs
        want = {"A": (n, n), "B": (n, p), "C": (q, n), "D": (q, p), "b_x": (n,), "b_y": (q,),
                GATE: (n,)}  # fmt: skip
        unknown = sorted(set(self.params) - set(want))
        if unknown:
            raise ValueError(f"unknown model params {unknown}")
        for k in param_names(self.params):
            if tuple(self.params[k].shape) != want[k]:
                raise ValueError(f"param {k} has shape {self.params[k].shape}, expected {want[k]}")
        for k, m in self.masks.items():
            if k not in (*MATRICES, GATE) or tuple(m.shape) != want[k]:
                raise ValueError(f"mask {k!r} must have the shape of {k} {want.get(k)}")
        if GATE in self.masks and GATE not in self.params:
            raise ValueError(f"mask {GATE!r} given without the gate parameter {GATE!r}")
        # Masked entries are structural zeros: the block-sparse products skip them.
        self.params = dict(self.params)
        for k, m in self.masks.items():
            self.params[k] = self.params[k] * m

    @cached_property
    def structure(self) -> BlockStructure:
        """Which blocks of the weight matrices can be non-zero (computed once, from the masks)."""
        return BlockStructure.of(self)

    @property
    def gated(self) -> bool:
        """Whether the model has a gate (``beta``)."""
        return GATE in self.params

    @property
    def gate_units(self) -> np.ndarray:
        """Indices of the gated hidden neurons (empty without a gate)."""
        if not self.gated:
            return np.zeros(0, dtype=np.int64)
        m = self.masks.get(GATE)
        return np.arange(self.n_hidden) if m is None else np.flatnonzero(to_host(m))

    def gate(self):
        """``σ(β_i)`` of the gated neurons (:attr:`gate_units` order), from the current ``beta``.

        Computed on every call, never cached: ``beta`` may be changed in place (finite
        differences, optimizer steps).
        """
        beta = self.params[GATE]
        units = self.gate_units
        cols = array_module(beta).asarray(units) if units.size < self.n_hidden else slice(None)
        return sigmoid(beta[cols])

    @property
    def phi(self):
        """The hidden map's activation including the gate: ``s ⊙ φ`` (``activation`` if ungated).

        What the forward solves and the gradients use; rebuilt on each access from the current
        ``beta``, so it is cheap to get once per solve and never stale.
        """
        if not self.gated:
            return self.activation
        return GatedActivation(self.activation, self.gate(), self.gate_units)

    @property
    def n_trainable(self) -> int:
        """Trainable parameters: the free (unmasked) entries of every parameter.

        Weights, biases and gates; structural zeros (mask entries 0) are not counted.
        """
        total = 0
        for k in param_names(self.params):
            m = self.masks.get(k)
            total += int(self.params[k].size if m is None else np.count_nonzero(to_host(m)))
        return total

    @property
    def n_hidden(self) -> int:
        return int(self.params["A"].shape[0])

    @property
    def n_inputs(self) -> int:
        return int(self.params["B"].shape[1])

    @property
    def n_outputs(self) -> int:
        return int(self.params["C"].shape[0])

    def copy(self) -> ImplicitModel:
        return ImplicitModel(
            {k: v.copy() for k, v in self.params.items()},
            self.activation,
            {k: v.copy() for k, v in self.masks.items()},
            self.kappa,
            json.loads(json.dumps(self.meta)),
        )

    def astype(self, backend) -> ImplicitModel:
        """The same model with params and masks on ``backend``'s device and dtype."""
        model = ImplicitModel(
            {k: backend.asarray(v) for k, v in self.params.items()},
            self.activation,
            {k: backend.asarray(v) for k, v in self.masks.items()},
            self.kappa,
            self.meta,
        )
        # The same masks on another device: the same blocks, if already computed.
        return model.reuse_structure(self) if "structure" in self.__dict__ else model

    def reuse_structure(self, other: ImplicitModel) -> ImplicitModel:
        """Take ``other``'s :attr:`structure` rather than recompute it; returns ``self``.

        Only for a model with ``other``'s masks, shapes and meta (other weights, or another
        device): the structure depends on nothing else, and rebuilding it from the masks costs
        more than a whole training step of a small batch.
        """
        self.__dict__["structure"] = other.structure
        return self

    def save(self, path) -> Path:
        """Write the model to ``path`` (``.npz``, no pickle), atomically."""
        arrays = {f"param/{k}": to_host(v) for k, v in self.params.items()}
        arrays.update({f"mask/{k}": to_host(v) for k, v in self.masks.items()})
        header = {
            "format": "dimplicit-model",
            "version": FORMAT_VERSION if self.gated else 1,
            "activation": self.activation.to_list(self.n_hidden),
            "kappa": self.kappa,
            "meta": self.meta,
        }
        arrays["header"] = np.array(json.dumps(header))
        return save_npz_atomic(path, arrays)

    @classmethod
    def load(cls, path) -> ImplicitModel:
        """Read a model written by :meth:`save`; one-line errors for missing or malformed files.

        Every header field the library later relies on is checked here (types, solver
        options, calibration), so a damaged file fails at load with the field's name rather
        than deep inside scoring.
        """
        arrays = load_npz(path, "model")
        try:
            header = json.loads(str(arrays["header"]))
            check_model_header(header)
            params = {k: arrays[f"param/{k}"] for k in PARAM_NAMES}
            if f"param/{GATE}" in arrays:
                if header["version"] < 2:
                    raise ValueError(f"a version 1 file cannot hold a gate ({GATE})")
                params[GATE] = arrays[f"param/{GATE}"]
            names_masked = (*MATRICES, GATE)
            masks = {k: arrays[f"mask/{k}"] for k in names_masked if f"mask/{k}" in arrays}
            names = header["activation"]
            spec = names[0] if len(set(names)) == 1 else names
            act = Activation(spec, params["A"].shape[0])
            scaler = (header.get("meta", {}).get("training", {}).get("scaler")) or {}
            if scaler and len(scaler["mean"]) != params["B"].shape[1]:
                raise ValueError("header field meta.training.scaler has the wrong length")
            return cls(params, act, masks, header.get("kappa"), header.get("meta", {}))
        except (KeyError, ValueError, TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: malformed dimplicit model file ({exc})") from None


def check_model_header(header) -> None:
    """Raise ``ValueError`` naming the first malformed field of a model file's header."""
    from dataclasses import fields

    from dimplicit.anomaly.metrics import Calibration
    from dimplicit.solvers import SolverOptions

    def need(ok, field_name, what):
        if not ok:
            raise ValueError(f"header field {field_name} must be {what}")

    need(isinstance(header, dict), "(top level)", "a JSON object")
    if header.get("format") != "dimplicit-model":
        raise ValueError("not a dimplicit model file")
    version = header.get("version")
    need(
        isinstance(version, int) and not isinstance(version, bool) and 1 <= version,
        "version",
        "a positive integer",
    )
    if version > FORMAT_VERSION:
        raise ValueError(f"model format version {version}; this dimplicit reads {FORMAT_VERSION}")
    names = header.get("activation")
    need(
        isinstance(names, list) and names and all(isinstance(n, str) for n in names),
        "activation",
        "a non-empty list of activation names",
    )
    kappa = header.get("kappa")
    need(
        kappa is None or (isinstance(kappa, int | float) and not isinstance(kappa, bool)),
        "kappa",
        "a number or null",
    )
    meta = header.get("meta", {})
    need(isinstance(meta, dict), "meta", "a JSON object")
    training = meta.get("training", {})
    need(isinstance(training, dict), "meta.training", "a JSON object")
    need(training.get("task", "autoencode") in ("classify", "regress", "autoencode"),
         "meta.training.task", "classify, regress or autoencode")  # fmt: skip
    for key in ("feature_names", "label_classes", "normal_classes", "target_names"):
        value = training.get(key, [])
        need(
            value is None or (isinstance(value, list) and all(isinstance(v, str) for v in value)),
            f"meta.training.{key}",
            "a list of strings",
        )
    forward = training.get("forward")
    if forward is not None:
        need(isinstance(forward, dict), "meta.training.forward", "a JSON object")
        known = {f.name for f in fields(SolverOptions)}
        unknown = sorted(set(forward) - known)
        need(not unknown, "meta.training.forward", f"solver options only (unknown: {unknown})")
        try:
            SolverOptions(**forward)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"header field meta.training.forward: {exc}") from None
    for name in ("scaler", "target_scaler"):
        scaler = training.get(name)
        if scaler is not None:
            need(
                isinstance(scaler, dict)
                and all(
                    isinstance(scaler.get(k), list)
                    and all(isinstance(x, int | float) and not isinstance(x, bool)
                            for x in scaler[k])
                    for k in ("mean", "std")
                ),
                f"meta.training.{name}",
                "an object with lists of numbers mean and std",
            )  # fmt: skip
    cal = meta.get("calibration")
    if cal is not None:
        required = ("mean", "std", "threshold")
        need(
            isinstance(cal, dict)
            and all(
                isinstance(cal.get(k), int | float) and not isinstance(cal.get(k), bool)
                for k in required
            )
            and set(cal) <= {f.name for f in fields(Calibration)},
            "meta.calibration",
            "an object with numbers mean, std and threshold",
        )


def save_npz_atomic(path, arrays: dict) -> Path:
    """``np.savez`` to a temporary sibling, fsync, then rename over ``path``.

    A crash mid-write leaves any existing file at ``path`` intact, and the next write of the
    same path removes the temporary a killed run left (see :mod:`dimplicit.atomic`).
    """
    return write_file(path, lambda fh: np.savez(fh, **arrays))


def load_npz(path, what: str = "file") -> dict:
    """Load every array of an ``.npz`` with ``allow_pickle=False``; one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as exc:  # zipfile.BadZipFile, EOFError, ValueError on truncation
        raise ValueError(f"{path}: unreadable or truncated {what} ({type(exc).__name__})") from None


def weights_sha256(params: dict) -> str:
    """SHA-256 over all weight arrays' bytes, in ``PARAM_NAMES`` order, C-contiguous, host.

    Two runs have the same hash exactly when their weights are bitwise identical.  A gated
    model's ``beta`` is hashed last (ungated models hash exactly the six arrays, as before).
    """
    h = hashlib.sha256()
    for k in param_names(params):
        h.update(np.ascontiguousarray(to_host(params[k])).tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------- builders


def with_gate(model: ImplicitModel, units, beta=0.0) -> ImplicitModel:
    """A copy of ``model`` whose neurons ``units`` get a trainable output gate ``σ(β_i)``.

    Parameters
    ----------
    model : ImplicitModel
        Without a gate.
    units : sequence of int
        Indices of the hidden neurons to gate.
    beta : float or array
        Initial β of the gated neurons (a scalar, or one value per unit).

    Returns
    -------
    ImplicitModel
        The same weights, activation, κ and meta, plus ``params["beta"]`` and
        ``masks["beta"]`` (see the module docstring).
    """
    if model.gated:
        raise ValueError("the model already has a gate")
    n = model.n_hidden
    units = np.asarray(units, dtype=np.int64)
    if units.size == 0 or units.min() < 0 or units.max() >= n or np.unique(units).size < units.size:
        raise ValueError(f"units must be distinct neuron indices in [0, {n}), got {units}")
    dtype = to_host(model.params["A"]).dtype
    mask = np.zeros(n, dtype=dtype)
    mask[units] = 1
    b = np.zeros(n, dtype=dtype)
    b[units] = beta
    m = model.copy()
    return ImplicitModel({**m.params, GATE: b}, m.activation, {**m.masks, GATE: mask},
                         m.kappa, m.meta)  # fmt: skip


def _rng(seed):
    return np.random.default_rng(seed)


def dense_model(
    n_inputs: int,
    n_hidden: int,
    n_outputs: int,
    *,
    activation="relu",
    kappa: float | None = 0.95,
    a_norm: float = 0.5,
    use_D: bool = True,
    seed=0,
    dtype="float32",
) -> ImplicitModel:
    """A dense El Ghaoui implicit model with random weights.

    Parameters
    ----------
    n_inputs, n_hidden, n_outputs : int
        p, n, q.
    activation : str or list of str
        φ for all neurons, or one name per neuron.
    kappa : float or None
        ℓ1 row radius kept during training; the initial ``A`` satisfies it.
    a_norm : float
        Initial ‖A‖∞ (rows scaled to this ℓ1 norm; must be ≤ kappa when kappa is set).
    use_D : bool
        Keep the direct input→output path ``D``; if False it is masked to zero.
    seed : int
        Seed of the initialisation.
    """
    rng = _rng(seed)
    n, p, q = n_hidden, n_inputs, n_outputs
    A = rng.standard_normal((n, n))
    A *= a_norm / np.abs(A).sum(axis=1, keepdims=True)
    if kappa is not None and a_norm > kappa:
        raise ValueError(f"a_norm={a_norm} exceeds kappa={kappa}")
    params = {
        "A": A,
        "B": rng.standard_normal((n, p)) * np.sqrt(2.0 / p),
        "C": rng.standard_normal((q, n)) * np.sqrt(1.0 / n),
        "D": rng.standard_normal((q, p)) * np.sqrt(1.0 / p) if use_D else np.zeros((q, p)),
        "b_x": np.zeros(n),
        "b_y": np.zeros(q),
    }
    masks = {} if use_D else {"D": np.zeros((q, p))}
    params = {k: v.astype(dtype) for k, v in params.items()}
    masks = {k: v.astype(dtype) for k, v in masks.items()}
    meta = {"builder": "dense", "seed": seed, "widths": [p, n, q]}
    return ImplicitModel(params, Activation(activation, n), masks, kappa, meta)


def layered_model(
    widths,
    *,
    activation="leaky_relu:0.1",
    implicit_layers=(),
    implicit_activation="arctan",
    implicit_scale: float = 0.1,
    gated_layers=(),
    gate_init: float = 0.0,
    use_D: bool = False,
    kappa: float | None = None,
    seed=0,
    dtype="float32",
    init: str = "default",
) -> ImplicitModel:
    """A layered (feedforward) network written as an implicit model, optionally partly implicit.

    ``widths = [p, h_1, ..., h_L, q]``: input, hidden layers, output.  Hidden layer ``l+1``
    reads layer ``l`` through a block of ``A`` below the diagonal (so ``A`` is strictly block
    lower-triangular and Picard is exact after L iterations); ``B`` feeds only the first hidden
    layer and ``C`` reads only the last.  Input and output are identity (linear) layers.

    Parameters
    ----------
    widths : sequence of int
        At least ``[p, h_1, q]``.
    activation : str
        φ of the hidden layers.
    implicit_layers : sequence of int
        Hidden-layer indices (0-based) that get an all-to-all block *within* the layer, without
        self-loops: the "v1" latent block of Szekeres & Izsák (2024).  Such a model is genuinely
        implicit; its neurons use ``implicit_activation``.
    implicit_scale : float
        Initial scale of the intra-layer block (small, so the initial model is well-posed).
    gated_layers : sequence of int
        Hidden-layer indices whose neurons get a trainable gate ``σ(β_i)`` on their output:
        the "v2" latent layer of Szekeres & Izsák (2024).  The model then has the parameter
        ``beta`` (n,) and the mask ``masks["beta"]`` marking the gated neurons.
    gate_init : float
        Initial ``β`` of every gated neuron (0: gate σ(0) = 1/2, as a zero-initialised bias).
    use_D : bool
        Add a direct input→output path.
    kappa : float or None
        Row-ℓ1 radius of the intra-layer (implicit) blocks of ``A`` kept during training, so
        that every implicit layer stays a contraction (feedforward blocks are left free, see
        :func:`~dimplicit.projection.project_well_posed`).  None: unconstrained, as in the
        paper's models; non-convergence is then only detected and reported.
    init : {"default", "uniform-fan-in"}
        ``default``: scaled normal weights, zero biases, a small intra-layer block;
        ``uniform-fan-in``: every weight and bias of a neuron drawn from U(−1, 1)/√fan-in,
        fan-in = the neuron's incoming connections (the initialisation of Szekeres & Izsák
        2024; see :func:`uniform_fan_in`).
    """
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    widths = [int(w) for w in widths]
    if len(widths) < 3 or min(widths) < 1:
        raise ValueError(
            f"widths must be [inputs, hidden..., outputs] with ≥ 1 hidden, got {widths}"
        )
    p, hidden, q = widths[0], widths[1:-1], widths[-1]
    n = sum(hidden)
    offs = np.concatenate([[0], np.cumsum(hidden)])
    rng = _rng(seed)
    A = np.zeros((n, n))
    MA = np.zeros((n, n))
    for l in range(len(hidden) - 1):
        r0, r1, c0, c1 = offs[l + 1], offs[l + 2], offs[l], offs[l + 1]
        MA[r0:r1, c0:c1] = 1
        A[r0:r1, c0:c1] = rng.standard_normal((r1 - r0, c1 - c0)) * np.sqrt(2.0 / (c1 - c0))
    names = [activation] * n
    for l in implicit_layers:
        if not 0 <= l < len(hidden):
            raise ValueError(f"implicit layer {l} out of range for {len(hidden)} hidden layers")
        s0, s1 = offs[l], offs[l + 1]
        block = np.ones((s1 - s0, s1 - s0)) - np.eye(s1 - s0)  # all-to-all, no self-loops
        MA[s0:s1, s0:s1] = block
        A[s0:s1, s0:s1] = rng.standard_normal(block.shape) * block * implicit_scale / (s1 - s0)
        names[s0:s1] = [implicit_activation] * (s1 - s0)
    MB = np.zeros((n, p))
    MB[: hidden[0]] = 1
    MC = np.zeros((q, n))
    MC[:, offs[-2] :] = 1
    B = rng.standard_normal((n, p)) * np.sqrt(2.0 / p) * MB
    C = rng.standard_normal((q, n)) * np.sqrt(1.0 / hidden[-1]) * MC
    D = rng.standard_normal((q, p)) * np.sqrt(1.0 / p) if use_D else np.zeros((q, p))
    params = {"A": A, "B": B, "C": C, "D": D, "b_x": np.zeros(n), "b_y": np.zeros(q)}
    masks = {"A": MA, "B": MB, "C": MC}
    if not use_D:
        masks["D"] = np.zeros((q, p))
    if gated_layers:  # draws nothing from rng: a v2 model has its v1 twin's weights
        gate = np.zeros(n)
        for l in gated_layers:
            if not 0 <= l < len(hidden):
                raise ValueError(f"gated layer {l} out of range for {len(hidden)} hidden layers")
            gate[offs[l] : offs[l + 1]] = 1
        params[GATE] = gate * gate_init
        masks[GATE] = gate
    if init == "uniform-fan-in":
        params = uniform_fan_in(params, masks, rng)
    params = {k: v.astype(dtype) for k, v in params.items()}
    masks = {k: v.astype(dtype) for k, v in masks.items()}
    spec = names[0] if len(set(names)) == 1 else names
    meta = {
        "builder": "layered",
        "widths": widths,
        "implicit_layers": list(implicit_layers),
        "seed": seed,
    }
    if gated_layers:
        meta["gated_layers"] = [int(l) for l in gated_layers]
    return ImplicitModel(params, Activation(spec, n), masks, kappa, meta)


INITS = ("default", "uniform-fan-in")


def uniform_fan_in(params: dict, masks: dict, rng) -> dict:
    """Redraw every connected weight and every bias as U(−1, 1)/√fan-in of its neuron.

    A hidden neuron's fan-in counts its connections in ``A`` and ``B``, an output's in ``C``
    and ``D`` (after the masks); a neuron without any keeps fan-in 1.  Like PyTorch's
    ``nn.Linear`` default, biases use the same bound as the weights.  Any other parameter
    (e.g. a gate) is returned unchanged.
    """
    ones = {k: np.ones_like(params[k]) for k in ("A", "B", "C", "D")}
    M = {k: np.asarray(masks.get(k, ones[k]), dtype=np.float64) for k in ones}
    fan = {"x": M["A"].sum(1) + M["B"].sum(1), "y": M["C"].sum(1) + M["D"].sum(1)}
    bound = {k: 1.0 / np.sqrt(np.maximum(v, 1.0)) for k, v in fan.items()}
    out = dict(params)  # other parameters (e.g. gates) keep their own initialisation
    for k, side in (("A", "x"), ("B", "x"), ("C", "y"), ("D", "y")):
        w = rng.uniform(-1.0, 1.0, params[k].shape) * bound[side][:, None]
        out[k] = w * M[k]
    out["b_x"] = rng.uniform(-1.0, 1.0, params["b_x"].shape) * bound["x"]
    out["b_y"] = rng.uniform(-1.0, 1.0, params["b_y"].shape) * bound["y"]
    return out


def autoencoder_widths(n_features: int, layers: int, first: int, latent: int) -> list[int]:
    """Widths of the "(M;S;L)" autoencoders of Szekeres & Izsák (2024).

    ``M`` hidden layers; the encoder starts at width ``S`` and halves down to the latent width
    ``L``, latent layers fill the middle, and the decoder mirrors the encoder.  E.g.
    (5;32;16) → [p, 32, 16, 16, 16, 32, p] and (7;64;16) → [p, 64, 32, 16, 16, 16, 32, 64, p].
    """
    if layers < 1 or first < latent or latent < 1:
        raise ValueError(f"need M ≥ 1 and S ≥ L ≥ 1, got ({layers};{first};{latent})")
    enc = []
    w = first
    while w > latent and len(enc) < (layers - 1) // 2:
        enc.append(w)
        w //= 2
    middle = layers - 2 * len(enc)
    return [n_features, *enc, *([latent] * middle), *enc[::-1], n_features]


ARCHS = "dense | layered:W1,W2,... | ae-v0:M,S,L | ae-v1:M,S,L | ae-v2:M,S,L | ae-dense"
AUTOENCODERS = ("ae-v0", "ae-v1", "ae-v2")


def _check_model_fits(kind, nums, n_inputs, n_outputs, hidden, dtype) -> None:
    """Refuse, before allocating, a model whose training state would not fit in memory."""
    from dimplicit.memory import check_fits

    if kind in AUTOENCODERS and len(nums) == 3:
        n = sum(autoencoder_widths(n_inputs, *nums)[1:-1])
        what = f"architecture {kind}:{','.join(map(str, nums))} ({n} hidden neurons)"
    elif kind == "layered":
        n = sum(nums)
        what = f"architecture layered ({n} hidden neurons)"
    else:
        n = hidden
        what = f"a model with hidden={hidden}"
    p, q = n_inputs, n_outputs
    weights = n * n + n * p + q * n + q * p + n + q
    # Built in float64 then cast; training holds weights, masks, gradients and two optimizer
    # moments, so about six copies at the training dtype plus the float64 build.
    itemsize = 8 if str(dtype) == "float64" else 4
    check_fits(weights * (8 + 6 * itemsize), what)


def build_model(
    arch: str,
    n_inputs: int,
    n_outputs: int,
    *,
    hidden: int = 64,
    activation: str | None = None,
    kappa: float | None = 0.95,
    seed=0,
    dtype="float32",
    init: str = "default",
    latent_activation: str | None = None,
) -> ImplicitModel:
    """Build a model from a short architecture string (what the CLI's ``--arch`` takes).

    ``init`` (layered and ``ae-*`` layered models): see :func:`layered_model`.

    ``dense``
        El Ghaoui dense implicit model with ``hidden`` neurons, ‖A‖∞ ≤ ``kappa``.
    ``layered:W1,W2,...``
        Feedforward layers of these widths (unconstrained A).
    ``ae-v0:M,S,L`` / ``ae-v1:M,S,L`` / ``ae-v2:M,S,L``
        Szekeres & Izsák autoencoders (M hidden layers, first width S, latent width L):
        v0 feedforward with leaky ReLU 0.1; v1 adds an all-to-all block (no self-loops,
        arctan) in the central latent layer, making it implicit; ``kappa`` bounds the
        ℓ1 norm of that block's rows (None: unconstrained, as in the paper).  v2 is v1 with
        a trainable gate on every latent neuron: its output is ``σ(β_i) φ(z_i)``, ``β``
        initialised to 0 (the other weights are v1's for the same seed).
    ``ae-dense``
        Dense implicit autoencoder (outputs = inputs) with ‖A‖∞ ≤ ``kappa``.

    ``activation`` is φ of the hidden neurons (default: ``leaky_relu:0.1`` for the layered
    and autoencoder models, ``relu`` for the dense ones); ``latent_activation`` is φ of the
    latent layer of ``ae-v1``/``ae-v2`` (default ``arctan``; ignored by the other
    architectures).  The paper's v2 on HTRU2 is ``activation=latent_activation=
    "leaky_relu:0.1"``, on NSL-KDD ``activation=latent_activation="arctan"``.
    """
    kind, _, args = arch.partition(":")
    try:
        nums = [int(v) for v in args.split(",")] if args else []
    except ValueError:
        raise ValueError(f"bad architecture {arch!r}; expected {ARCHS}") from None
    if kind in ("dense", "ae-dense") and args:
        raise ValueError(f"architecture {kind!r} takes no sizes (got {arch!r}); use hidden")
    if any(v < 1 for v in nums):
        raise ValueError(f"architecture {arch!r}: every size must be a positive integer")
    for name, value in (("hidden", hidden), ("n_inputs", n_inputs), ("n_outputs", n_outputs)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    _check_model_fits(kind, nums, n_inputs, n_outputs, hidden, dtype)
    if kind in ("dense", "ae-dense"):
        q = n_inputs if kind == "ae-dense" else n_outputs
        return dense_model(
            n_inputs, hidden, q, activation=activation or "relu", kappa=kappa, seed=seed,
            dtype=dtype, use_D=kind == "dense",
        )  # fmt: skip
    if kind == "layered" and nums:
        return layered_model(
            [n_inputs, *nums, n_outputs], activation=activation or "leaky_relu:0.1",
            use_D=True, seed=seed, dtype=dtype, init=init,
        )  # fmt: skip
    if kind in AUTOENCODERS and len(nums) == 3:
        widths = autoencoder_widths(n_inputs, *nums)
        n_hidden_layers = len(widths) - 2
        implicit = (n_hidden_layers // 2,) if kind in ("ae-v1", "ae-v2") else ()
        model = layered_model(
            widths, activation=activation or "leaky_relu:0.1", implicit_layers=implicit,
            implicit_activation=latent_activation or "arctan",
            gated_layers=implicit if kind == "ae-v2" else (),
            kappa=kappa if implicit else None, seed=seed, dtype=dtype, init=init,
        )  # fmt: skip
        model.meta["arch"] = arch
        return model
    raise ValueError(f"bad architecture {arch!r}; expected {ARCHS}")
