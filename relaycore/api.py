"""The public entry points: ``relay_attention``, ``merge_states``, ``select_backend``."""

from __future__ import annotations

from typing import Optional, Sequence

from relaycore import dispatch, state
from relaycore.constants import FLOAT_DTYPES
from relaycore.types import AttentionState, PrefixLevel, RequestKV
from relaycore.buffers import check_result_buffers
from relaycore.validation import array_kind, check_dense, dtype_name, validate


def relay_attention(
    q,
    cu_seqlens_q,
    kv: RequestKV,
    prefixes: Sequence[PrefixLevel] = (),
    *,
    causal: bool = True,
    softmax_scale: Optional[float] = None,
    backend: str = "auto",
    plan=None,
    out=None,
    lse=None,
) -> AttentionState:
    """Attention of every query over its prefixes (level by level) then its own KV.

    Each query attends all tokens of the prefixes its request names, then its own tokens (all of
    them, or with ``causal=True`` those up to its own position: the queries are the last
    ``q_len`` own tokens). The result is exact attention over that context; how it is computed
    (one pass, or the relay split with each prefix read once for all the queries that share it)
    is the backend's business.

    Precision policy: fp16/bf16/fp32 inputs; products and sums in fp32; ``lse`` float32 in
    natural log; ``out`` in q's dtype. The reference computes in float64.

    The metadata (``cu_seqlens_q``, the KV's offsets, lengths and block table, each level's
    ``cu_seqlens`` and ``prefix_ids``) is on q's device or, with torch tensors, on the host:
    NumPy arrays, or CPU tensors beside tensors on a GPU. On the host it is read without a
    synchronization (``docs/guide/serving.md``).

    Args:
        q: ``[total_q, Hq, D]`` float16, bfloat16, float32 (float64 for reference/torch).
        cu_seqlens_q: int32 or int64 ``[B + 1]``: request ``b``'s queries are rows
            ``cu_seqlens_q[b]:cu_seqlens_q[b+1]`` of ``q``.
        kv: the requests' own KV, ``RaggedKV`` ``[total_kv, Hkv, D]`` or ``PagedKV``
            ``[num_blocks, block_size, Hkv, D]``; ``Hq`` a multiple of ``Hkv``.
        prefixes: zero or more ``PrefixLevel``; level ``l`` holds ``P_l`` prefixes
            ``[total_prefix_l, Hkv, D]`` and each request's prefix id at that level (-1: none).
        causal: mask own tokens after each query's position.
        softmax_scale: score scale; default ``1/sqrt(D)``. Within
            ``relaycore.validation.SCALE_RANGE`` (about 8e-39 to 2e38: ``softmax_scale *
            log2(e)`` a normal float32, as the Triton kernels take it), whatever the backend.
        backend: ``"auto"``, ``"reference"``, ``"torch"`` or ``"triton"``. ``"auto"`` picks the
            reference for NumPy inputs, Triton for CUDA tensors it supports, PyTorch otherwise
            (``select_backend`` says which and why). A named backend is never swapped.
        plan: a plan from ``relaycore.fast.triton.prepare`` (``import relaycore.fast.triton``)
            for this batch's metadata, or a ``GraphPlan`` from
            ``relaycore.fast.triton.prepare_graph`` updated for it: skips
            validation and planning (no host synchronization; plan once per step, reuse it for
            every layer). Runs the Triton backend, so ``backend`` must be "auto" or "triton".
        out: ``None``, or a buffer for the result's ``out`` (as a serving engine passes its
            layer's output): q's kind and device, the result's shape and dtype, contiguous
            (NumPy: C-contiguous and writeable), a plain tensor (no grad, no negative view, no
            inference tensor outside inference mode), in memory apart from every array of the
            call and from ``lse``; refused by a call to be differentiated. The Triton kernels
            write into it (under ``torch.compile`` too); the other backends copy their result
            in (``docs/guide/api.md``).
        lse: ``None``, or a buffer for the result's ``lse``, on the same terms.

    Returns:
        ``AttentionState(out [total_q, Hq, D] in q's dtype, lse [total_q, Hq] float32)``;
        ``lse`` is float64 when q is float64 (NumPy inputs are always float64). A query that sees no key gets out 0 and lse -inf.
        Each is the buffer given for it, where one was.

    Raises:
        TypeError, ValueError: bad input, naming the argument, the expected and the received.

    The values of q, k and v are not read on the host (that would synchronize a GPU): they must
    be finite, and the scores ``softmax_scale * q . k`` finite in the accumulation format
    (fp32; float64 for float64 inputs). Scores that overflow it have no meaningful result.
    Likewise the sums of values: where a query's values, weighted and summed, may pass the
    accumulation format's largest number (about 3.4e38 in fp32), the result may be inf or NaN
    though the exact one is finite (``relaycore.bounds.out_bound`` gives no bound there:
    Lemma 5 of ``docs/math/errors.md``).
    The reference backend alone reads them (on the host) and refuses, with a ``ValueError``, a
    value that is not finite and a score that overflows float64, the format it computes in: a
    score that overflows fp32 alone gets its exact answer there.

    Example:
        >>> import numpy as np, relaycore
        >>> rng = np.random.default_rng(0)
        >>> B, Hq, Hkv, D = 2, 4, 2, 16
        >>> q = rng.standard_normal((B, Hq, D))                  # one query per request
        >>> own = relaycore.RaggedKV(rng.standard_normal((6, Hkv, D)),
        ...                          rng.standard_normal((6, Hkv, D)), np.array([0, 3, 6]))
        >>> system = relaycore.PrefixLevel(rng.standard_normal((5, Hkv, D)),
        ...                                rng.standard_normal((5, Hkv, D)),
        ...                                np.array([0, 5]), np.array([0, 0]))
        >>> out, lse = relaycore.relay_attention(q, np.array([0, 1, 2]), own, [system])
        >>> out.shape, lse.shape
        ((2, 4, 16), (2, 4))
    """
    if plan is not None:
        if backend not in ("auto", "triton"):
            raise ValueError(f"backend: a plan runs the 'triton' backend, got backend={backend!r}")
        if not callable(getattr(plan, "run", None)):
            raise TypeError(f"plan: expected a plan from relaycore.fast.triton.prepare or prepare_graph, got "
                            f"{type(plan).__name__}")
        return plan.run(q, cu_seqlens_q, kv, prefixes, causal=causal, softmax_scale=softmax_scale, out=out, lse=lse)
    meta = validate(q, cu_seqlens_q, kv, prefixes, causal=causal, softmax_scale=softmax_scale)
    if out is not None or lse is not None:
        if meta.needs_grad:
            raise ValueError(f"{'out' if out is not None else 'lse'}: expected no buffer for a call to be "
                             f"differentiated (grad mode on and q, k or v requiring grad: its result is new "
                             f"tensors, as torch's out= ops refuse autograd), got one")
        check_result_buffers(out, lse, q, cu_seqlens_q, kv, prefixes, num_q_heads=meta.num_q_heads,
                             head_dim=meta.head_dim, dtype=meta.dtype)
    choice = dispatch.choose(meta, backend)
    return dispatch.load(choice.name).run(q, cu_seqlens_q, kv, tuple(prefixes), meta, out=out, lse=lse)


def select_backend(q, cu_seqlens_q, kv: RequestKV, prefixes: Sequence[PrefixLevel] = (), *, causal: bool = True,
                   softmax_scale: Optional[float] = None, backend: str = "auto") -> dispatch.BackendChoice:
    """The backend ``relay_attention`` would run these inputs on, and why (nothing is computed)."""
    meta = validate(q, cu_seqlens_q, kv, prefixes, causal=causal, softmax_scale=softmax_scale)
    return dispatch.choose(meta, backend)


def merge_states(a: AttentionState, b: AttentionState) -> AttentionState:
    """Merge the attention states of two disjoint key sets into the state of their union.

    ``lse = logaddexp(a.lse, b.lse)``, ``out = sigmoid(a.lse - b.lse) a.out + sigmoid(b.lse -
    a.lse) b.out``; ``(0, -inf)`` is the identity, and two empty states give ``(0, -inf)``.

    A state's ``lse`` is finite, or ``-inf`` for an empty key set (then ``out`` is 0); ``out`` is
    finite. ``+inf`` and NaN in ``lse``, and ``+-inf`` and NaN in ``out``, are not states and
    are refused where reading them costs no synchronization: NumPy arrays and CPU tensors.
    Tensors on a GPU are not read (a check would synchronize the device), so there a valid
    state is the caller's precondition: a row whose ``lse`` is ``+inf`` or NaN on either side
    gets NaN in ``out``, the other rows are unaffected.

    Args:
        a: ``out [..., D]``, ``lse [...]`` (NumPy arrays or torch tensors).
        b: the same shapes, kind and device as ``a``.

    Returns:
        ``AttentionState`` with ``out`` in ``a.out``'s dtype and ``lse`` in ``a.lse``'s dtype.

    Raises:
        TypeError, ValueError: mismatched kinds, shapes, dtypes or devices.
        ValueError: an ``lse`` of ``+inf`` or NaN, or an ``out`` of ``+-inf`` or NaN, in a NumPy
            array or CPU tensor (naming ``a.out``, ``a.lse``, ``b.out`` or ``b.lse``, the
            first bad value and its index).

    Example:
        >>> import numpy as np, relaycore
        >>> a = relaycore.AttentionState(np.ones((1, 2)), np.array([0.0]))
        >>> empty = relaycore.AttentionState(np.zeros((1, 2)), np.array([-np.inf]))
        >>> relaycore.merge_states(a, empty).lse
        array([0.])
    """
    for name, s in (("a", a), ("b", b)):
        if not isinstance(s, tuple) or len(s) != 2:
            raise TypeError(f"{name}: expected an AttentionState (out, lse), got {type(s).__name__}")
        for field, x in (("out", s[0]), ("lse", s[1])):
            if array_kind(x) is None:
                raise TypeError(f"{name}.{field}: expected a NumPy array or torch tensor, got {type(x).__name__}")
            check_dense(f"{name}.{field}", x)
    a, b = AttentionState(*a), AttentionState(*b)
    kinds = {array_kind(x) for x in (a.out, a.lse, b.out, b.lse)}
    if len(kinds) != 1:
        raise TypeError(f"merge_states: expected all arrays of one kind, got {sorted(kinds)}")
    if a.out.ndim == 0:
        raise ValueError("a.out: expected shape [..., D] (at least one axis), got shape ()")
    if tuple(a.out.shape) != tuple(b.out.shape):
        raise ValueError(f"b.out: expected the shape of a.out {tuple(a.out.shape)}, got {tuple(b.out.shape)}")
    if tuple(a.lse.shape) != tuple(b.lse.shape):
        raise ValueError(f"b.lse: expected the shape of a.lse {tuple(a.lse.shape)}, got {tuple(b.lse.shape)}")
    if tuple(a.out.shape[:-1]) != tuple(a.lse.shape):
        raise ValueError(f"a.lse: expected shape {tuple(a.out.shape[:-1])} (a.out without its last axis), got {tuple(a.lse.shape)}")
    if kinds == {"torch"}:
        devices = {str(x.device) for x in (a.out, a.lse, b.out, b.lse)}
        if len(devices) != 1:
            raise ValueError(f"merge_states: expected all tensors on one device, got {sorted(devices)}")
    for name, x in (("a.out", a.out), ("a.lse", a.lse), ("b.out", b.out), ("b.lse", b.lse)):
        if dtype_name(x) not in FLOAT_DTYPES:
            raise TypeError(f"{name}: expected a dtype in {list(FLOAT_DTYPES)}, got {dtype_name(x)}")
    for field, x, y in (("out", a.out, b.out), ("lse", a.lse, b.lse)):
        if dtype_name(x) != dtype_name(y):
            raise TypeError(f"b.{field}: expected the dtype of a.{field} ({dtype_name(x)}), got {dtype_name(y)}")
    for name, s in (("a", a), ("b", b)):
        state.check_out(f"{name}.out", s.out)
        state.check_lse(f"{name}.lse", s.lse)
    return state.merge(a, b)
