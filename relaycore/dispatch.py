"""Backend registry and the choice ``backend="auto"`` makes.

A backend is a module with two functions:

``supports(meta: BatchMeta) -> str | None``
    ``None`` if it can run the batch, else the reason it cannot.
``run(q, cu_seqlens_q, kv, prefixes, meta: BatchMeta, *, out=None, lse=None) -> AttentionState``
    the computation, on inputs that ``relaycore.validation.validate`` accepted, written into
    the buffers ``out``/``lse`` where given (``buffers.check_result_buffers`` accepted them).

A backend the user names is used or refused with its reason, never swapped for another.
"""

from __future__ import annotations

import importlib
from typing import NamedTuple, Optional

from relaycore.validation import BatchMeta

BACKENDS = {
    "reference": "relaycore.reference.backend",
    "torch": "relaycore.fast.torch_backend",
    "triton": "relaycore.fast.triton.backend",
}


class BackendChoice(NamedTuple):
    """The backend that runs a batch, and why it was chosen."""

    name: str
    reason: str


def load(name: str):
    """Import backend ``name``.

    Raises:
        ValueError: an unknown name.
        RuntimeError: the import failed, whatever it raised (a missing package, a driver library
            that does not load, a version mismatch); the message names the original exception's
            type and message, and the exception is chained as the cause.
    """
    if name not in BACKENDS:
        raise ValueError(f"backend: expected one of {['auto', *BACKENDS]}, got {name!r}")
    try:
        return importlib.import_module(BACKENDS[name])
    except Exception as exc:  # any import failure makes the backend unavailable, never a crash of "auto"
        raise RuntimeError(f"backend {name!r} is not available here: {type(exc).__name__}: {exc}") from exc


def _unavailable(name: str) -> Optional[str]:
    """``None`` if backend ``name`` imports, else why not (the import error's type and message)."""
    try:
        load(name)
    except RuntimeError as exc:
        cause = exc.__cause__
        return f"{type(cause).__name__}: {cause}"
    return None


def choose(meta: BatchMeta, backend: str = "auto") -> BackendChoice:
    """Resolve ``backend`` for a validated batch.

    Raises:
        ValueError: unknown backend name, or a named backend that cannot run this batch.
        RuntimeError: a named backend that cannot be imported (``load`` names the import error).

    With ``"auto"``, CUDA tensors go to Triton when it imports and supports the batch, else to
    the PyTorch backend; the choice's ``reason`` then says why (the import error's type and
    message, or what Triton cannot run).
    """
    if not isinstance(backend, str):
        raise TypeError(f"backend: expected a str, got {type(backend).__name__}")
    if backend != "auto":
        reason = load(backend).supports(meta)
        if reason is not None:
            raise ValueError(f"backend {backend!r} cannot run this batch: {reason}")
        return BackendChoice(backend, "named by the caller")
    if meta.array_kind == "numpy":
        return BackendChoice("reference", "NumPy inputs: the float64 oracle")
    if meta.device.startswith("cuda"):
        missing = _unavailable("triton")
        if missing is not None:
            return BackendChoice("torch", f"torch tensors on {meta.device}; Triton is not available here: {missing}")
        reason = load("triton").supports(meta)
        if reason is None:
            return BackendChoice("triton", f"torch tensors on {meta.device}: the Triton kernels")
        return BackendChoice("torch", f"torch tensors on {meta.device}; Triton cannot run them: {reason}")
    return BackendChoice("torch", f"torch tensors on {meta.device}: the portable PyTorch backend")
