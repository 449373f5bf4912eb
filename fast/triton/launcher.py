"""Kernel launches with little host work.

``kernel[grid](...)`` binds and specializes every argument on every call: measured at about
38 us per launch of the partial kernel on an H200 with triton 3.6 (``fast/triton/NOTES.md``),
more than the kernels themselves at small batch. ``launch`` does that once per
specialization and then calls the compiled kernel directly. The specialization key is the
one Triton uses: each pointer's dtype and 16-byte alignment, each integer's width, whether it
is 1 and whether it is a multiple of 16, and the constexpr values.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Sequence, Tuple

import torch

try:  # triton >= 3.4
    from triton import knobs as _knobs
except ImportError:  # pragma: no cover - older triton keeps the hooks on CompiledKernel
    _knobs = None

_COMPILED: Dict[Tuple, Any] = {}


def interpreting() -> bool:
    """Whether Triton runs its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _spec(arg) -> Tuple:
    if isinstance(arg, torch.Tensor):
        return (arg.dtype, arg.data_ptr() % 16 == 0)
    if isinstance(arg, bool):
        return ("b", arg)
    if isinstance(arg, int):
        return ("i", arg == 1, arg % 16 == 0, -(2**31) <= arg < 2**31)
    return (type(arg).__name__,)


def _hooks():
    if _knobs is None:
        return None, None
    return _knobs.runtime.launch_enter_hook, _knobs.runtime.launch_exit_hook


def launch(kernel, grid: Tuple[int, int], args: Sequence, constexprs: Dict[str, Any], *, num_warps: int,
           num_stages: int, device: torch.device) -> None:
    """Launch ``kernel[grid](*args, **constexprs)``.

    Args:
        kernel: a ``@triton.jit`` function whose constexpr parameters come after all others, in
            the order of ``constexprs``.
        grid: ``(x, y)`` program counts.
        args: the runtime arguments (tensors, ints, floats), in signature order.
        constexprs: the compile-time arguments, in signature order.
        device: the device of the tensors (the stream is its current one).
    """
    if interpreting():
        kernel[grid](*args, **constexprs, num_warps=num_warps, num_stages=num_stages)
        return
    key = (kernel, device.index, num_warps, num_stages, tuple(constexprs.items()), tuple(_spec(a) for a in args))
    compiled = _COMPILED.get(key)
    if compiled is None:
        _COMPILED[key] = kernel[grid](*args, **constexprs, num_warps=num_warps, num_stages=num_stages)
        return
    stream = torch.cuda.current_stream(device).cuda_stream
    every = (*args, *constexprs.values())
    grid3 = (grid[0], grid[1], 1)
    enter, exit_ = _hooks()
    compiled.run(grid3[0], grid3[1], grid3[2], stream, compiled.function, compiled.packed_metadata,
                 compiled.launch_metadata(grid3, stream, *every), enter, exit_, *every)
