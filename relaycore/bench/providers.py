"""The registry of providers: relaycore's backends and the peers they are measured against.

A provider turns a ``Problem`` (the inputs every provider shares) into one or more *variants*
(SDPA: one per backend), each a ``Prepared`` call. Layout conversion and planning happen in
the setup, outside the timed call, as a serving engine does them once per step. A provider
whose library is missing says why through ``probe``; the runner reports it as missing at every
point, never drops it.
"""

from __future__ import annotations

import importlib
import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator, List, Optional, Tuple

from relaycore.bench.problem import Problem

#: FlashInfer's float workspace (its documentation recommends 128 MiB).
FLASHINFER_WORKSPACE_BYTES = 128 << 20
#: FlashInfer page size where the prefix length allows (a prefix must fill whole pages to be
#: shared); otherwise the largest power of two that divides it.
FLASHINFER_PAGE = 16


class Unsupported(Exception):
    """A provider cannot run this point (a documented limit, not a failure)."""


@dataclass
class Prepared:
    """One ready-to-time call.

    Attributes:
        fn: the timed call, no arguments; returns the provider's raw result.
        result: raw result -> ``(out [B * q_len, Hq, D], lse [B * q_len, Hq] or None)``.
        graphable: whether the call may be captured in a CUDA graph (no host synchronization).
        detail: how it was configured, for the report.
    """

    fn: Callable[[], Any]
    result: Callable[[Any], Tuple[Any, Optional[Any]]]
    graphable: bool
    detail: str = ""


Variants = Iterator[Tuple[str, Callable[[], Prepared]]]


@dataclass(frozen=True)
class Provider:
    """A way to compute a point.

    Attributes:
        name: registry key (JSON, tables, ``--providers``).
        title: human name for the report.
        peer: a peer library (``False``: relaycore's own backends).
        needs_cuda: runs only on a CUDA device.
        probe: ``() -> None`` if its libraries import, else the reason they do not.
        variants: ``problem -> iterator of (variant name, factory of Prepared)``.
    """

    name: str
    title: str
    peer: bool
    needs_cuda: bool
    probe: Callable[[], Optional[str]]
    variants: Callable[[Problem], Variants]


def _probe_modules(*names: str) -> Callable[[], Optional[str]]:
    def probe() -> Optional[str]:
        for name in names:
            try:
                importlib.import_module(name)
            except Exception as exc:  # a broken install raises more than ImportError
                return f"import {name} failed: {type(exc).__name__}: {exc}"
        return None

    return probe


# ---------------------------------------------------------------------------------------------
# relaycore


def _relaycore_triton(problem: Problem) -> Variants:
    def setup() -> Prepared:
        import relaycore
        from relaycore.fast.triton import prepare

        q, cu, kv, prefixes = problem.relay_arguments(page_size=FLASHINFER_PAGE)
        planned = prepare(q, cu, kv, prefixes, causal=True, softmax_scale=problem.scale)

        def call():
            return relaycore.relay_attention(q, cu, kv, prefixes, causal=True, softmax_scale=problem.scale,
                                             backend="triton", plan=planned)

        return Prepared(call, lambda st: (st.out, st.lse), True,
                        f"relay_attention(backend='triton', plan=prepare(...)): planned once per step; own KV paged, "
                        f"page_size={FLASHINFER_PAGE}")

    yield "paged", setup


def _relaycore_torch(problem: Problem) -> Variants:
    def setup() -> Prepared:
        from relaycore.fast import torch_backend
        from relaycore.validation import validate

        q, cu, kv, prefixes = problem.relay_arguments()
        meta = validate(q, cu, kv, prefixes, causal=True, softmax_scale=problem.scale)
        return Prepared(lambda: torch_backend.run(q, cu, kv, prefixes, meta), lambda st: (st.out, st.lse), False,
                        "host-side index building and copies on every call: not graph-capturable")

    yield "default", setup


# ---------------------------------------------------------------------------------------------
# torch's own attention over the concatenated context


#: torch warns each time a forced SDPA backend cannot run a shape; the runner reports it anyway.
_SDPA_REFUSALS = r".*(kernel not used because|has been runtime disabled|fused kernels require|flash attention requires).*"


def _sdpa(problem: Problem) -> Variants:
    from torch.nn.attention import SDPBackend

    warnings.filterwarnings("ignore", message=_SDPA_REFUSALS, category=UserWarning)

    names = ["FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION"] if problem.device.type == "cuda" \
        else ["MATH", "FLASH_ATTENTION"]
    for name in names:
        yield name.lower(), lambda name=name: _sdpa_setup(problem, getattr(SDPBackend, name))


def _sdpa_setup(problem: Problem, backend) -> Prepared:
    import torch.nn.functional as F
    from torch.nn.attention import sdpa_kernel
    from torch.nn.attention.bias import causal_lower_right

    p = problem.point
    k, v = problem.concatenated_kv()  # [B, Hkv, L, D]
    q = problem.q.view(p.batch, p.q_len, p.num_q_heads, p.head_dim).transpose(1, 2).contiguous()
    mask = causal_lower_right(p.q_len, k.shape[2]) if p.q_len > 1 else None
    gqa = p.num_q_heads != p.num_kv_heads

    def call():
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=problem.scale, enable_gqa=gqa)

    def result(out):
        return out.transpose(1, 2).reshape(p.batch * p.q_len, p.num_q_heads, p.head_dim), None

    detail = f"batched [B, H, prefix+own, D], prefix copied per request{', lower-right causal bias' if mask is not None else ''}"
    return Prepared(call, result, True, detail)


_FLEX: dict = {}


def _compiled_flex():
    """``flex_attention`` compiled once per process, with dynamic shapes so that the points of a
    grid reuse its kernels instead of recompiling for each."""
    if "fn" not in _FLEX:
        import torch
        import torch._dynamo
        from torch.nn.attention.flex_attention import flex_attention

        for knob in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit", "accumulated_cache_size_limit"):
            if hasattr(torch._dynamo.config, knob):
                setattr(torch._dynamo.config, knob, max(getattr(torch._dynamo.config, knob), 1024))
        _FLEX["fn"] = torch.compile(flex_attention, dynamic=True)
    return _FLEX["fn"]


def _flex(problem: Problem) -> Variants:
    """Two ways a FlexAttention user would write it; the faster correct one is reported."""
    yield "packed", lambda: _flex_packed(problem)
    yield "batched", lambda: _flex_batched(problem)


def _flex_packed(problem: Problem) -> Prepared:
    """One packed sequence ``[prefix; own_0; ...; own_B-1]`` (prefix stored once) with a
    shared-prefix document mask."""
    import torch
    from torch.nn.attention.flex_attention import create_block_mask

    p = problem.point
    # sizes as tensors, not Python ints: the compiled kernel then does not specialise on them
    s, c, lq = (torch.tensor(n, device=problem.device) for n in (p.prefix_len, p.own_len, p.q_len))
    k, v = (torch.cat([a, b]).transpose(0, 1).unsqueeze(0).contiguous() for a, b in
            ((problem.prefix_k, problem.own_k), (problem.prefix_v, problem.own_v)))  # [1, Hkv, S + B * C, D]
    q = problem.q.transpose(0, 1).unsqueeze(0).contiguous()  # [1, Hq, B * q_len, D]

    def shared_prefix_documents(b, h, q_idx, kv_idx):
        own = kv_idx - s
        same_request = own // c == q_idx // lq
        causal = own % c <= (c - lq) + q_idx % lq
        return (kv_idx < s) | ((own >= 0) & same_request & causal)

    block_mask = create_block_mask(shared_prefix_documents, 1, None, q.shape[2], k.shape[2], device=problem.device)
    flex, gqa = _compiled_flex(), p.num_q_heads != p.num_kv_heads
    return Prepared(lambda: flex(q, k, v, block_mask=block_mask, scale=problem.scale, enable_gqa=gqa),
                    lambda out: (out[0].transpose(0, 1), None), True,
                    "torch.compile(flex_attention); one packed sequence [prefix; own_0; ...] with a shared-prefix "
                    "document mask")


def _flex_batched(problem: Problem) -> Prepared:
    """Each request's concatenated context ``[prefix; own]`` as one batch row (the prefix copied
    per request, as for SDPA), causal over the own tokens (lower-right aligned)."""
    import torch
    from torch.nn.attention.flex_attention import create_block_mask

    p = problem.point
    k, v = problem.concatenated_kv()  # [B, Hkv, L, D]
    q = problem.q.view(p.batch, p.q_len, p.num_q_heads, p.head_dim).transpose(1, 2).contiguous()
    offset = torch.tensor(k.shape[2] - p.q_len, device=problem.device)

    def lower_right_causal(b, h, q_idx, kv_idx):
        return kv_idx <= offset + q_idx

    block_mask = create_block_mask(lower_right_causal, None, None, p.q_len, k.shape[2], device=problem.device)
    flex, gqa = _compiled_flex(), p.num_q_heads != p.num_kv_heads
    return Prepared(lambda: flex(q, k, v, block_mask=block_mask, scale=problem.scale, enable_gqa=gqa),
                    lambda out: (out.transpose(1, 2).reshape(p.batch * p.q_len, p.num_q_heads, p.head_dim), None),
                    True, "torch.compile(flex_attention); batched [B, H, prefix+own, D], prefix copied per request, "
                          "lower-right causal block mask")


# ---------------------------------------------------------------------------------------------
# FlashInfer 0.5: paged KV with the prefix pages shared by every request


@dataclass
class _Pages:
    cache: Any  # [num_pages, 2, page_size, Hkv, D]
    page_size: int
    prefix_pages: Any  # int32 [n_prefix_pages]
    own_indptr: Any  # int32 [B + 1]
    own_indices: Any  # int32
    own_last: Any  # int32 [B]
    all_indptr: Any  # prefix pages then own pages, per request
    all_indices: Any


def _pages(problem: Problem) -> _Pages:
    import torch

    p, dev = problem.point, problem.device
    ps = FLASHINFER_PAGE if p.prefix_len == 0 else math.gcd(p.prefix_len, FLASHINFER_PAGE)
    n_prefix = p.prefix_len // ps
    n_own = -(-p.own_len // ps)
    pad = n_own * ps - p.own_len

    def paged(prefix, own):
        own = own.view(p.batch, p.own_len, p.num_kv_heads, p.head_dim)
        own = torch.nn.functional.pad(own, (0, 0, 0, 0, 0, pad)).reshape(p.batch * n_own, ps, p.num_kv_heads, p.head_dim)
        return torch.cat([prefix.reshape(n_prefix, ps, p.num_kv_heads, p.head_dim), own])

    cache = torch.stack([paged(problem.prefix_k, problem.own_k), paged(problem.prefix_v, problem.own_v)], dim=1)
    i32 = dict(dtype=torch.int32, device=dev)
    prefix_pages = torch.arange(n_prefix, **i32)
    own_pages = n_prefix + torch.arange(p.batch * n_own, **i32).view(p.batch, n_own)
    own_indptr = torch.arange(p.batch + 1, **i32) * n_own
    own_last = torch.full((p.batch,), p.own_len - (n_own - 1) * ps, **i32)
    all_indices = torch.cat([prefix_pages.expand(p.batch, -1), own_pages], dim=1).reshape(-1)
    all_indptr = torch.arange(p.batch + 1, **i32) * (n_prefix + n_own)
    return _Pages(cache, ps, prefix_pages, own_indptr, own_pages.reshape(-1), own_last, all_indptr, all_indices)


def _metadata(x, host: bool):
    """``x`` (an int32 tensor on the problem's device) where a planner takes it: copied to the
    host's pinned memory where ``host``, else as it is."""
    return x.cpu().pin_memory() if host else x


#: What a FlashInfer planner's ``host=True`` puts on the host: the index pointers and last-page
#: lengths (FlashInfer 0.5's ``plan`` reads them there, and copies device ones to the host, a
#: synchronization). The page lists stay on the device, where an engine keeps them: ``plan``
#: copies a page list from the host with ``non_blocking=False``, which waits for the stream.
FLASHINFER_HOST_METADATA = "index pointers and last-page lengths (page lists on the device)"


def flashinfer_paged_planner(problem: Problem, *, host: bool = False):
    """FlashInfer's per-request paged wrapper for ``problem``: decode
    (``BatchDecodeWithPagedKVCacheWrapper``) at one query a request, else causal prefill; each
    request's page list is the shared prefix's pages, then its own.

    Args:
        problem: the point's inputs, on a CUDA device.
        host: give ``plan`` its ``FLASHINFER_HOST_METADATA`` from the host (pinned) instead of
            the device.

    Returns:
        ``(wrapper, plan, cache, detail)``: ``plan()`` plans the batch (what an engine calls
        once per step); then ``wrapper.run(problem.q, cache)`` computes it.
    """
    import flashinfer
    import torch

    p = problem.point
    pg = _pages(problem)
    ws = torch.empty(FLASHINFER_WORKSPACE_BYTES, dtype=torch.uint8, device=problem.device)
    common = dict(q_data_type=problem.q.dtype, kv_data_type=problem.q.dtype, sm_scale=problem.scale)
    indptr, last, indices = _metadata(pg.all_indptr, host), _metadata(pg.own_last, host), pg.all_indices
    if p.q_len == 1:
        tensor_cores = p.num_q_heads // p.num_kv_heads >= 4
        w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(ws, "NHD", use_tensor_cores=tensor_cores)
        plan = lambda: w.plan(indptr, indices, last, p.num_q_heads, p.num_kv_heads, p.head_dim,  # noqa: E731
                              pg.page_size, **common)
        detail = f"BatchDecodeWithPagedKVCacheWrapper, use_tensor_cores={tensor_cores}"
    else:
        w = flashinfer.BatchPrefillWithPagedKVCacheWrapper(ws, "NHD")
        cu_q = _metadata(problem.cu_seqlens_q, host)
        plan = lambda: w.plan(cu_q, indptr, indices, last, p.num_q_heads, p.num_kv_heads, p.head_dim,  # noqa: E731
                              pg.page_size, causal=True, **common)
        detail = "BatchPrefillWithPagedKVCacheWrapper, causal"
    return w, plan, pg.cache, (f"{detail}; page_size={pg.page_size}, each request's page list = shared prefix pages "
                               f"+ own pages")


def _flashinfer_paged(problem: Problem) -> Variants:
    def setup() -> Prepared:
        w, plan, cache, detail = flashinfer_paged_planner(problem)
        plan()
        q = problem.q
        return Prepared(lambda: w.run(q, cache), lambda out: (out, None), True, detail)

    yield "default", setup


def flashinfer_cascade_planner(problem: Problem, *, host: bool = False):
    """FlashInfer's ``MultiLevelCascadeAttentionWrapper`` for ``problem``, two levels: the
    shared prefix's pages for every query, then each request's own pages (causal).

    Args:
        problem: the point's inputs, on a CUDA device, with a shared prefix.
        host: give ``plan`` its ``FLASHINFER_HOST_METADATA`` from the host (pinned) instead of
            the device.

    Returns:
        ``(wrapper, plan, cache, detail)``, as ``flashinfer_paged_planner``'s.

    Raises:
        Unsupported: a point without a prefix (the cascade's first level would be empty).
    """
    import flashinfer
    import torch

    p = problem.point
    if p.prefix_len == 0:
        raise Unsupported("no shared prefix: the cascade's first level would be empty")
    pg = _pages(problem)
    ws = torch.empty(FLASHINFER_WORKSPACE_BYTES, dtype=torch.uint8, device=problem.device)
    i32 = dict(dtype=torch.int32, device=problem.device)
    w = flashinfer.MultiLevelCascadeAttentionWrapper(2, ws, "NHD")
    levels = [
        [torch.tensor([0, p.batch * p.q_len], **i32), problem.cu_seqlens_q],
        [torch.tensor([0, pg.prefix_pages.numel()], **i32), pg.own_indptr],
        [pg.prefix_pages, pg.own_indices],
        [torch.tensor([pg.page_size], **i32), pg.own_last],
    ]
    qo_indptr, kv_indptr, last = ([_metadata(x, host) for x in arrays] for arrays in (levels[0], levels[1], levels[3]))
    indices = levels[2]

    def plan():
        w.plan(qo_indptr, kv_indptr, indices, last, p.num_q_heads, p.num_kv_heads, p.head_dim, pg.page_size,
               causal=True,  # applied to the last level (own tokens) only
               sm_scale=problem.scale, q_data_type=problem.q.dtype, kv_data_type=problem.q.dtype)

    return w, plan, pg.cache, f"MultiLevelCascadeAttentionWrapper(2 levels: shared prefix, own pages), page_size={pg.page_size}"


def _flashinfer_cascade(problem: Problem) -> Variants:
    def setup() -> Prepared:
        w, plan, cache, detail = flashinfer_cascade_planner(problem)
        plan()
        q = problem.q
        return Prepared(lambda: w.run(q, cache), lambda out: (out, None), True, detail)

    yield "default", setup


REGISTRY: List[Provider] = [
    Provider("relaycore_triton", "relaycore (Triton)", False, True,
             _probe_modules("triton", "relaycore.fast.triton"), _relaycore_triton),
    Provider("relaycore_torch", "relaycore (PyTorch)", False, False,
             _probe_modules("torch", "relaycore.fast.torch_backend"), _relaycore_torch),
    Provider("sdpa", "torch SDPA (concatenated KV)", True, False,
             _probe_modules("torch.nn.attention.bias"), _sdpa),
    Provider("flex", "FlexAttention (compiled)", True, True,
             _probe_modules("torch.nn.attention.flex_attention"), _flex),
    Provider("flashinfer_paged", "FlashInfer paged (shared pages)", True, True,
             _probe_modules("flashinfer"), _flashinfer_paged),
    Provider("flashinfer_cascade", "FlashInfer cascade", True, True,
             _probe_modules("flashinfer"), _flashinfer_cascade),
]

#: The relaycore provider whose speed the issue-3 targets judge.
RELAY = "relaycore_triton"
#: The peer the paper's per-request kernel stands for (PagedAttention-style, no sharing).
PER_REQUEST = "flashinfer_paged"
#: The peer the issue-3 decode speedup target names.
CASCADE = "flashinfer_cascade"


def by_name(names: Optional[List[str]] = None) -> List[Provider]:
    """The registered providers, or those named, in registry order.

    Raises:
        ValueError: an unknown name.
    """
    if names is None:
        return list(REGISTRY)
    known = {p.name: p for p in REGISTRY}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"--providers: expected names from {list(known)}, got unknown {unknown}")
    return [p for p in REGISTRY if p.name in names]
