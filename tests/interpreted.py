"""What the modules that run the Triton kernels under the CPU interpreter share. Import it
before anything that imports triton: it skips the importing module on a machine with CUDA
(``tests/gpu`` runs the compiled kernels there), sets ``TRITON_INTERPRET=1``, and says whether
triton was imported without it first (``PREIMPORTED``: the kernels are then compiled for a GPU,
so the module's tests run again in a fresh process, ``run_in_a_fresh_process``, and skip here,
``in_process``). Also ``tl.dot`` summed in one order, and the smallest blocking that still
cuts every segment into chunks."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if torch.cuda.is_available():
    pytest.skip("CUDA present: tests/gpu runs the compiled kernels", allow_module_level=True)
PREIMPORTED = "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1"
os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton")
in_process = pytest.mark.skipif(PREIMPORTED, reason="triton was imported without the interpreter: see test_in_a_fresh_process")
fresh_process_only = pytest.mark.skipif(not PREIMPORTED, reason="this process interprets the kernels: the tests run here")

from triton.runtime import interpreter  # noqa: E402

from relaycore.fast.triton import Config  # noqa: E402


def run_in_a_fresh_process(path: str, timeout: int) -> None:
    """Run the test module at ``path`` in a new interpreter with ``TRITON_INTERPRET=1``; fail with
    the end of its output unless every test passed."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", path],
                         capture_output=True, text=True, env=env, timeout=timeout)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]


def dot_summed_in_order(self, a, b, d, input_precision, max_num_imprecise_acc):
    """The interpreter's ``tl.dot``, each output summed in one order, its products' index
    ascending, whatever the tile's shape.

    The interpreter's own calls numpy's ``matmul``, i.e. the CPU's BLAS, whose kernels for some
    CPUs (OpenBLAS's for Zen and Haswell, not SkylakeX) sum a row's products in an order that
    depends on the tile's height: a row's bits would then change with the rows beside it, which
    the GPU's matrix instructions do not do for the tiles that mix requests (``Config``). The
    error bound holds for any order of the sums. Operands the interpreter holds as raw bits (fp8,
    bf16) are not converted here: no test multiplies them (bf16 is upcast first)."""
    if not all(x.data.dtype in (np.float16, np.float32, np.float64) for x in (a, b)):
        raise NotImplementedError(f"tl.dot of {a.data.dtype} x {b.data.dtype} under the interpreter tests")
    acc = d.data.copy()
    x, y = a.data.astype(acc.dtype), b.data.astype(acc.dtype)
    for k in range(x.shape[-1]):
        acc += x[..., k : k + 1] * y[..., k : k + 1, :]
    return interpreter.TensorHandle(acc, d.dtype.scalar)


@pytest.fixture(autouse=True, scope="module")
def dots_summed_in_order():
    """Every test of a module that imports this fixture multiplies with ``dot_summed_in_order``."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(interpreter.InterpreterBuilder, "create_dot", dot_summed_in_order)
        yield


#: Tiles of 16 rows, 16-key chunks at decode (2 per segment), 16-key blocks; every tile walks
#: its fully seen blocks unmasked and carries its next block's pages.
TINY = Config(block_m=16, prefix_block_m=16, min_block_m=16, block_n=16, short_block_n=16, min_chunk=16,
              target_chunks=2, num_warps=4, num_stages=2, unmasked_min_block_m=16, carry_pages_min_block_m=16)
