"""What the interpreter tests share (import after ``TRITON_INTERPRET=1`` is set): ``tl.dot``
summed in one order, and the smallest blocking that still cuts every segment into chunks."""

from __future__ import annotations

import numpy as np
import pytest
from triton.runtime import interpreter

from relaycore.fast.triton import Config


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
