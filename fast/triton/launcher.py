"""Kernel launches with little host work.

``kernel[grid](...)`` binds and specializes every argument on every call: measured at about
38 us per launch of the partial kernel on an H200 with triton 3.6 (``fast/triton/NOTES.md``),
more than the kernels themselves at small batch. ``launch`` does that once per
specialization and then calls the compiled kernel directly. Its cache key is Triton's
specialization: each pointer's dtype and 16-byte alignment, each integer's being 1, a
multiple of 16 and in int32's range, and the constexpr values.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Dict, Optional, Sequence, Tuple

import torch

try:  # triton >= 3.4
    from triton import knobs as _knobs
except ImportError:  # pragma: no cover - older triton keeps the hooks on CompiledKernel
    _knobs = None

_COMPILED: Dict[Tuple, Any] = {}

#: The raw ``cudaStream_t`` of a device's current stream, as Triton's own launcher reads it
#: (``torch.cuda.current_stream`` builds a Python object per call).
_current_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)


def interpreting() -> bool:
    """Whether Triton runs its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _key(arg):
    """The part of the cache key for one runtime argument, as Triton specializes it: a tensor's
    dtype and 16-byte alignment, an integer's being 1, a multiple of 16, and in int32's range
    (a finite key space: a server whose strides and table widths change from step to step
    reuses the same compiled kernels), any other scalar's type."""
    if isinstance(arg, torch.Tensor):
        return arg.dtype, arg.data_ptr() % 16 == 0
    if isinstance(arg, int) and not isinstance(arg, bool):
        return arg == 1, arg % 16 == 0, -(2**31) <= arg < 2**31
    return type(arg), arg if isinstance(arg, bool) else None


def _hooks():
    if _knobs is None:
        return None, None
    return _knobs.runtime.launch_enter_hook, _knobs.runtime.launch_exit_hook


def launch(kernel, grid: Tuple[int, int], args: Sequence, constexprs: Dict[str, Any], *, num_warps: int,
           num_stages: int, device: torch.device, stream: Optional[torch.cuda.Stream] = None) -> None:
    """Launch ``kernel[grid](*args, **constexprs)`` on ``stream`` (default: ``device``'s
    current stream).

    Args:
        kernel: a ``@triton.jit`` function whose constexpr parameters come after all others, in
            the order of ``constexprs``.
        grid: ``(x, y)`` program counts.
        args: the runtime arguments (tensors, ints, floats), in signature order.
        constexprs: the compile-time arguments, in signature order.
        device: the device of the tensors.
        stream: a stream of ``device``, or ``None``.
    """
    if interpreting():
        kernel[grid](*args, **constexprs, num_warps=num_warps, num_stages=num_stages)
        return
    key = (kernel, device.index, num_warps, num_stages, *constexprs.values(), *map(_key, args))
    compiled = _COMPILED.get(key)
    if compiled is None:
        with contextlib.nullcontext() if stream is None else torch.cuda.stream(stream):
            _COMPILED[key] = kernel[grid](*args, **constexprs, num_warps=num_warps, num_stages=num_stages)
        return
    raw = _current_raw_stream(device.index) if stream is None else stream.cuda_stream
    every = (*args, *constexprs.values())
    enter, exit_ = _hooks()
    compiled.run(grid[0], grid[1], 1, raw, compiled.function, compiled.packed_metadata,
                 compiled.launch_metadata((grid[0], grid[1], 1), raw, *every), enter, exit_, *every)
