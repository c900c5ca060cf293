"""Backend selection (NumPy / CuPy) and GPU-vs-CPU equality.

The GPU tests are marked ``gpu`` and skip cleanly where CuPy or a CUDA device is missing
(CI); on a GPU machine they must pass.
"""

import numpy as np
import pytest

from dimplicit import gradcheck
from dimplicit.backend import (
    DeviceUnavailableError,
    check_same_device,
    get_backend,
    gpu_available,
    to_host,
)
from dimplicit.cli import main
from dimplicit.fit import fit
from dimplicit.model import PARAM_NAMES, dense_model
from dimplicit.optim import OptimizerConfig
from dimplicit.partition import StepConfig, partition_sums

needs_gpu = pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA device")


def test_cpu_backend_defaults():
    be = get_backend()
    assert be.xp is np and be.np_dtype == np.float32
    assert get_backend(dtype="float64").asarray([1, 2]).dtype == np.float64


def test_bad_backend_options():
    with pytest.raises(ValueError, match="device"):
        get_backend("tpu")
    with pytest.raises(ValueError, match="dtype"):
        get_backend(dtype="float16")
    with pytest.raises(ValueError, match="tf32"):
        get_backend("cpu", tf32=True)


@pytest.mark.skipif(gpu_available(), reason="checks the error raised without a GPU")
def test_gpu_request_without_gpu_is_a_clear_error(capsys):
    with pytest.raises(DeviceUnavailableError, match="CuPy and a CUDA device"):
        get_backend("gpu")
    assert main(["bench", "core", "--device", "gpu", "--hidden", "8", "--batch", "8"]) == 2
    err = capsys.readouterr().err
    assert "needs CuPy and a CUDA device" in err and len(err.strip().splitlines()) == 1


def test_mixed_devices_are_refused():
    be = get_backend()

    check_same_device({"A": np.zeros(2)}, be)
    if gpu_available():
        import cupy

        with pytest.raises(TypeError, match="move it"):
            check_same_device({"A": cupy.zeros(2)}, be)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("kind", ["dense", "layered-implicit"])
@pytest.mark.parametrize("method", ["implicit", "neumann", "jfb", "phantom-3"])
def test_gpu_float64_gradients_equal_cpu(kind, method):
    model, U, Y = gradcheck.small_problem(kind, "tanh", seed=0)
    cfg = StepConfig("mse")
    cpu = partition_sums(model, U, Y, cfg)
    be = get_backend("gpu", "float64")
    gpu = partition_sums(model.astype(be), be.asarray(U), be.asarray(Y), cfg)
    for k in PARAM_NAMES:
        g = to_host(gpu["grads"][k])
        np.testing.assert_allclose(g, cpu["grads"][k], rtol=1e-10, atol=1e-12)


@pytest.mark.gpu
@needs_gpu
def test_gpu_training_matches_cpu_float64():
    """A few float32 GPU steps stay within 1e-3 (relative) of float64 CPU training."""
    rng = np.random.default_rng(0)
    U = rng.standard_normal((512, 6))
    Y = rng.standard_normal((512, 2))
    model = dense_model(6, 32, 2, activation="tanh", seed=0, dtype="float64")
    opt = OptimizerConfig("sgd", lr=0.05, momentum=0.0)
    ref, _ = fit(model, U, Y, optimizer=opt, epochs=1, batch_size=128)
    got, _ = fit(
        model, U, Y, optimizer=opt, epochs=1, batch_size=128, backend=get_backend("gpu", "float32")
    )
    for k in PARAM_NAMES:
        np.testing.assert_allclose(got.params[k], ref.params[k], rtol=1e-3, atol=1e-4)


@pytest.mark.gpu
@needs_gpu
def test_gpu_bench_reports_fraction_of_peak():
    from dimplicit.benchmarks.core import bench_core

    out = bench_core(hidden=256, batch=1024, steps=2, device="gpu")
    assert 0 < out["fraction_of_peak"] <= 1.5 and out["gemm_peak_gflops"] > 0


def _gpu_count():
    if not gpu_available():
        return 0
    import cupy

    return cupy.cuda.runtime.getDeviceCount()


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(_gpu_count() < 2, reason="needs two GPUs and dask-cuda")
def test_weights_identical_on_1_and_2_gpu_workers(teacher_store):
    pytest.importorskip("dask_cuda")
    from dimplicit.distributed.connect import connect
    from dimplicit.distributed.spec import DataSpec
    from dimplicit.distributed.trainer import Trainer

    hashes = []
    for n in (1, 2):
        with connect(gpus=n, quiet=True) as client:
            t = Trainer(
                dense_model(6, 16, 3, seed=0),
                DataSpec(str(teacher_store), "classify", device="gpu"),
                config=StepConfig("cross_entropy"),
                epochs=1,
                batch_size=1000,
                block_rows=250,
            ).fit(client)
            hashes.append(t.summary_["weights_sha256"])
    assert hashes[0] == hashes[1]
