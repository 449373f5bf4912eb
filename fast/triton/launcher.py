"""Kernel launches with little host work.

``kernel[grid](...)`` binds and specializes every argument on every call: measured at about
38 us per launch of the partial kernel on an H200 with triton 3.6 (``fast/triton/NOTES.md``),
more than the kernels themselves at small batch. ``launch`` does that once per
specialization and then calls the compiled kernel directly (``run_compiled``). Its cache key is
Triton's specialization: each pointer's dtype and 16-byte alignment, each integer's being 1, a
multiple of 16 and in int32's range, and the constexpr values. A plan's calls skip even that
key for arguments that specialize as its last call's did (``launch.Binding``).
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


#: The ``torch.cuda.Stream`` of each ``(device index, raw stream)`` that ``current_stream`` returned.
_STREAMS: Dict[Tuple[int, int], torch.cuda.Stream] = {}
#: Entries ``_STREAMS`` keeps before it starts again (an engine uses a few streams; a program
#: that makes and drops external streams would otherwise grow it without end).
MAX_STREAMS = 64


def current_stream(device: torch.device) -> torch.cuda.Stream:
    """``torch.cuda.current_stream(device)``, without a new ``Stream`` object a call: one is
    built where none was for this device and raw stream (``torch.cuda.current_stream`` took
    9 us of host time on the H200 machine: ``Stream.__new__`` switches the current device). A
    ``Stream`` is a value (its device and handle), so the kept one stands for any other."""
    key = (device.index, _current_raw_stream(device.index))
    stream = _STREAMS.get(key)
    if stream is None:
        if len(_STREAMS) >= MAX_STREAMS:
            _STREAMS.clear()
        stream = _STREAMS[key] = torch.cuda.current_stream(device)
    return stream


def interpreting() -> bool:
    """Whether Triton runs its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _spec(args: Sequence) -> Tuple:
    """The part of the cache key for the runtime arguments, as Triton specializes them: a
    tensor's dtype and 16-byte alignment, an integer's being 1, a multiple of 16, and in int32's
    range (a finite key space: a server whose strides and table widths change from step to step
    reuses the same compiled kernels), any other scalar's type (and a bool's value). Flat, and
    still one key per specialization: a dtype starts a tensor's entry, a type another scalar's,
    a bool an integer's."""
    spec = []
    for arg in args:
        if type(arg) is int:  # the common case first: strides and work-list fields
            spec += (arg == 1, arg % 16 == 0, -(2**31) <= arg < 2**31)
        elif isinstance(arg, torch.Tensor):
            spec += (arg.dtype, arg.data_ptr() % 16 == 0)
        elif isinstance(arg, int) and not isinstance(arg, bool):
            spec += (int(arg) == 1, int(arg) % 16 == 0, -(2**31) <= int(arg) < 2**31)
        else:
            spec += (type(arg), arg if isinstance(arg, bool) else None)
    return tuple(spec)


def _hooks():
    """The launch hooks Triton's own launcher would call (a profiler's), each ``None`` where
    none is set: triton >= 3.5 keeps each as a chain of hooks, never ``None``, and its launcher
    calls an empty chain (and builds its metadata) at every launch, where it skips ``None``."""
    if _knobs is None:
        return None, None
    hooks = (_knobs.runtime.launch_enter_hook, _knobs.runtime.launch_exit_hook)
    return tuple(hook if hook is not None and getattr(hook, "calls", True) else None for hook in hooks)


def launch(kernel, grid: Tuple[int, int], args: Sequence, constexprs: Dict[str, Any], *, num_warps: int,
           num_stages: int, device: torch.device, stream: Optional[torch.cuda.Stream] = None) -> Optional[Any]:
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

    Returns:
        The compiled kernel, which ``run_compiled`` launches again for arguments that Triton
        specializes the same way (``_spec``) with the same ``constexprs``; ``None`` when
        interpreting.
    """
    if interpreting():
        kernel[grid](*args, **constexprs, num_warps=num_warps, num_stages=num_stages)
        return None
    key = (kernel, device.index, num_warps, num_stages, *constexprs.values(), *_spec(args))
    compiled = _COMPILED.get(key)
    if compiled is None:
        with contextlib.nullcontext() if stream is None else torch.cuda.stream(stream):
            compiled = _COMPILED[key] = kernel[grid](*args, **constexprs, num_warps=num_warps, num_stages=num_stages)
        return compiled
    run_compiled(compiled, grid, (*args, *constexprs.values()), device=device, stream=stream)
    return compiled


def run_compiled(compiled, grid: Tuple[int, int], every: Sequence, *, device: torch.device,
                 stream: Optional[torch.cuda.Stream] = None) -> None:
    """Launch a kernel that ``launch`` compiled, on ``stream`` (default: ``device``'s current
    stream), without looking it up: the caller knows that ``every`` (the runtime arguments,
    then the constexpr values) specializes as the arguments it was compiled for did."""
    raw = _current_raw_stream(device.index) if stream is None else stream.cuda_stream
    enter, exit_ = _hooks()
    metadata = None if enter is None else compiled.launch_metadata((grid[0], grid[1], 1), raw, *every)
    compiled.run(grid[0], grid[1], 1, raw, compiled.function, compiled.packed_metadata, metadata, enter, exit_,
                 *every)
