"""The one setup factory every provider shares, the float64 oracle, and the correctness gate.

``make_problem`` draws one point's inputs once; every provider reads these same tensors (laid
out its own way, outside the timed region). ``compute_oracle`` is attention over each request's
concatenated context ``[prefix ; own tokens]`` in float64 with a single softmax (no split, no
merge), and the elementwise error bound of ``relaycore.bounds`` for every output.
``check`` is the gate a provider must pass before it is timed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from relaycore import bounds
from relaycore.bench.grids import Point
from relaycore.types import PagedKV, PrefixLevel, RaggedKV

#: Largest float64 score block the oracle materialises (2^26 elements = 512 MiB).
ORACLE_BLOCK_ELEMENTS = 1 << 26
#: Query tokens per request compared with ``relaycore.reference`` when it is installed.
CROSSCHECK_QUERIES = 4


@dataclass
class Problem:
    """One point's inputs, as torch tensors on one device.

    Attributes:
        point: the sizes.
        q: ``[B * q_len, Hq, D]`` in the point's dtype; request ``b``'s queries are rows
            ``b * q_len : (b + 1) * q_len``, its last ``q_len`` own tokens.
        prefix_k, prefix_v: ``[prefix_len, Hkv, D]``, the shared prefix.
        own_k, own_v: ``[B * own_len, Hkv, D]``, request ``b``'s own tokens at rows
            ``b * own_len : (b + 1) * own_len``.
        cu_seqlens_q, cu_seqlens_kv: int32 ``[B + 1]`` on the device.
        scale: softmax scale, ``1 / sqrt(D)``.
    """

    point: Point
    q: "torch.Tensor"
    prefix_k: "torch.Tensor"
    prefix_v: "torch.Tensor"
    own_k: "torch.Tensor"
    own_v: "torch.Tensor"
    cu_seqlens_q: "torch.Tensor"
    cu_seqlens_kv: "torch.Tensor"
    scale: float

    @property
    def device(self):
        return self.q.device

    def relay_arguments(self, page_size: int = 0) -> Tuple:
        """``(q, cu_seqlens_q, kv, (PrefixLevel,))`` for ``relaycore.relay_attention``.

        Args:
            page_size: 0 for ``RaggedKV``; else a ``PagedKV`` with pages of that many tokens,
                request ``b``'s pages after request ``b - 1``'s (the last one padded).
        """
        import torch

        p = self.point
        i32 = dict(dtype=torch.int32, device=self.device)
        level = PrefixLevel(self.prefix_k, self.prefix_v, torch.tensor([0, p.prefix_len], **i32),
                            torch.zeros(p.batch, **i32))
        if not page_size:
            return self.q, self.cu_seqlens_q, RaggedKV(self.own_k, self.own_v, self.cu_seqlens_kv), (level,)
        pages = -(-p.own_len // page_size)

        def cache(x):
            x = x.view(p.batch, p.own_len, p.num_kv_heads, p.head_dim)
            x = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, pages * page_size - p.own_len))
            return x.reshape(p.batch * pages, page_size, p.num_kv_heads, p.head_dim)

        table = torch.arange(p.batch * pages, **i32).view(p.batch, pages)
        kv = PagedKV(cache(self.own_k), cache(self.own_v), table, torch.full((p.batch,), p.own_len, **i32))
        return self.q, self.cu_seqlens_q, kv, (level,)

    def concatenated_kv(self) -> Tuple:
        """Each request's context ``[prefix ; own]`` as contiguous ``k, v [B, Hkv, prefix_len +
        own_len, D]`` (the prefix copied once per request, as an engine without sharing holds it)."""
        import torch

        p = self.point
        pre = [x.permute(1, 0, 2).unsqueeze(0).expand(p.batch, -1, -1, -1) for x in (self.prefix_k, self.prefix_v)]
        own = [x.view(p.batch, p.own_len, p.num_kv_heads, p.head_dim).permute(0, 2, 1, 3) for x in (self.own_k, self.own_v)]
        return tuple(torch.cat([a, b], dim=2) for a, b in zip(pre, own))


def make_problem(point: Point, device, seed: int = 0) -> Problem:
    """Draw a point's inputs: standard normal values rounded to the point's dtype.

    Args:
        point: the sizes.
        device: a torch device (``"cuda"``, ``"cpu"``).
        seed: the generator seed; the same seed gives the same inputs.
    """
    import torch

    p = point
    dtype = getattr(torch, p.dtype)
    gen = torch.Generator(device=device).manual_seed(seed)

    def draw(*shape):
        return torch.randn(*shape, generator=gen, device=device, dtype=torch.float32).to(dtype)

    cu_q = torch.arange(0, p.batch + 1, dtype=torch.int32, device=device) * p.q_len
    cu_kv = torch.arange(0, p.batch + 1, dtype=torch.int32, device=device) * p.own_len
    return Problem(
        point=p,
        q=draw(p.batch * p.q_len, p.num_q_heads, p.head_dim),
        prefix_k=draw(p.prefix_len, p.num_kv_heads, p.head_dim),
        prefix_v=draw(p.prefix_len, p.num_kv_heads, p.head_dim),
        own_k=draw(p.batch * p.own_len, p.num_kv_heads, p.head_dim),
        own_v=draw(p.batch * p.own_len, p.num_kv_heads, p.head_dim),
        cu_seqlens_q=cu_q,
        cu_seqlens_kv=cu_kv,
        scale=1.0 / float(np.sqrt(p.head_dim)),
    )


@dataclass
class Oracle:
    """The exact result of a problem and the error each output may carry.

    Attributes:
        out: float64 ``[B * q_len, Hq, D]``; lse: float64 ``[B * q_len, Hq]`` (natural log).
        out_bound: float64 like ``out``, from ``relaycore.bounds.out_bound``.
        lse_bound: float64 like ``lse``, from ``relaycore.bounds.lse_bound``; ``None`` where
            no lse bound is proved for the point (``bounds.NoBound``: ``rho > 2``, from about
            2e5 keys), and then ``check`` compares the outputs alone.
        crosscheck: how the oracle itself was checked against ``relaycore.reference``.
    """

    out: "torch.Tensor"
    lse: "torch.Tensor"
    out_bound: "torch.Tensor"
    lse_bound: Optional["torch.Tensor"]
    crosscheck: str


def _rows_to_tokens(x, p: Point):
    """``[B, Hkv, q_len * G, ...]`` (rows = query token, then head of the group) to
    ``[B * q_len, Hq, ...]``."""
    g = p.num_q_heads // p.num_kv_heads
    tail = tuple(x.shape[3:])
    x = x.reshape(p.batch, p.num_kv_heads, p.q_len, g, *tail).movedim(2, 1)
    return x.reshape(p.batch * p.q_len, p.num_q_heads, *tail)


def exact_attention(problem: Problem):
    """Attention over each request's concatenated context in float64, one softmax per row.

    Returns:
        ``(out, lse, num_keys, score_abs, value_abs)``: float64 ``[B * q_len, Hq, D]``,
        ``[B * q_len, Hq]``, and the quantities ``relaycore.bounds`` needs per row: keys seen,
        ``max_j scale * sum_d |q_d k_jd|`` and ``max_j |v_jd|`` over the keys seen.
    """
    import torch

    p, f64 = problem.point, torch.float64
    b_, lq, c, s, g = p.batch, p.q_len, p.own_len, p.prefix_len, p.num_q_heads // p.num_kv_heads
    rows = lq * g
    q = problem.q.to(f64).view(b_, lq, p.num_kv_heads, g, p.head_dim).permute(0, 2, 1, 3, 4)
    q = q.reshape(b_, p.num_kv_heads, rows, p.head_dim)
    kp, vp = (x.to(f64).permute(1, 0, 2) for x in (problem.prefix_k, problem.prefix_v))  # [Hkv, S, D]
    ko, vo = (x.to(f64).view(b_, c, p.num_kv_heads, p.head_dim).permute(0, 2, 1, 3) for x in (problem.own_k, problem.own_v))
    # row r is query token j = r // G, which sees own tokens t <= c - lq + j
    last_seen = (c - lq) + torch.arange(rows, device=q.device) // g
    own_mask = torch.arange(c, device=q.device)[None, :] <= last_seen[:, None]  # [rows, C]
    vmax_prefix = vp.abs().amax(dim=1) if s else vp.new_zeros(vp.shape[0], vp.shape[2])  # [Hkv, D]
    vmax_own = vo.abs().cummax(dim=2).values[:, :, last_seen]  # [B, Hkv, rows, D]
    value_abs = torch.maximum(vmax_own, vmax_prefix[None, :, None, :])

    out = torch.empty_like(q)
    lse = q.new_empty(q.shape[:-1])
    score_abs = q.new_empty(q.shape[:-1])
    per_request_row = p.num_kv_heads * (s + c)
    row_step = max(1, min(rows, ORACLE_BLOCK_ELEMENTS // per_request_row))
    req_step = max(1, ORACLE_BLOCK_ELEMENTS // (per_request_row * row_step))
    for b0 in range(0, b_, req_step):
        bs = slice(b0, min(b_, b0 + req_step))
        for r0 in range(0, rows, row_step):
            rs = slice(r0, min(rows, r0 + row_step))
            qc = q[bs, :, rs]
            scores = torch.cat([qc @ kp.transpose(-1, -2)[None], qc @ ko[bs].transpose(-1, -2)], dim=-1) * problem.scale
            magnitudes = torch.cat([qc.abs() @ kp.abs().transpose(-1, -2)[None], qc.abs() @ ko[bs].abs().transpose(-1, -2)],
                                   dim=-1) * problem.scale
            seen = torch.cat([own_mask.new_ones(own_mask[rs].shape[0], s), own_mask[rs]], dim=-1)
            scores = scores.masked_fill(~seen, float("-inf"))
            row_lse = torch.logsumexp(scores, dim=-1)
            weights = torch.exp(scores - row_lse[..., None])
            out[bs, :, rs] = weights[..., :s] @ vp[None] + weights[..., s:] @ vo[bs]
            lse[bs, :, rs] = row_lse
            score_abs[bs, :, rs] = magnitudes.masked_fill(~seen, 0.0).amax(dim=-1)
    num_keys = (s + last_seen + 1).to(f64).expand(b_, p.num_kv_heads, rows)
    return tuple(_rows_to_tokens(x, p) for x in (out, lse, num_keys, score_abs, value_abs))


def compute_oracle(problem: Problem) -> Oracle:
    """The float64 result of ``problem`` and its elementwise error bounds (see module doc)."""
    import torch

    out, lse, num_keys, score_abs, value_abs = exact_attention(problem)
    p = problem.point
    prec = bounds.precision(p.dtype)
    host = [x.cpu().numpy() for x in (out, lse, num_keys, score_abs, value_abs)]
    ob = bounds.out_bound(host[0], host[4], host[2], host[3], p.head_dim, prec)
    try:
        lb = bounds.lse_bound(host[1], host[2], host[3], p.head_dim, prec)
    except bounds.NoBound:  # no proved lse bound at this point: the outputs alone are checked
        lb = None
    dev = problem.device
    oracle = Oracle(out, lse, torch.from_numpy(ob).to(dev), None if lb is None else torch.from_numpy(lb).to(dev), "")
    oracle.crosscheck = crosscheck_reference(problem, oracle, host)
    return oracle


def crosscheck_reference(problem: Problem, oracle: Oracle, host) -> str:
    """Compare the oracle with ``relaycore.reference`` (NumPy float64) on the last few queries
    of the first and the last request, under the float64 bound of ``relaycore.bounds``.

    Returns:
        ``"passed (...)"``, or ``"unavailable: ..."`` when ``relaycore.reference`` is not
        installed.

    Raises:
        AssertionError: the two float64 computations disagree beyond the float64 bound (the
            oracle is wrong, so nothing measured against it may be reported).
    """
    try:
        import relaycore
        import relaycore.reference  # noqa: F401  (the NumPy oracle, a separate module)
    except ImportError as exc:
        return f"unavailable: relaycore.reference not importable ({exc})"
    p = problem.point
    n = min(p.q_len, CROSSCHECK_QUERIES)
    requests = sorted({0, p.batch - 1})
    q_rows = np.concatenate([np.arange((b + 1) * p.q_len - n, (b + 1) * p.q_len) for b in requests])
    own_rows = np.concatenate([np.arange(b * p.own_len, (b + 1) * p.own_len) for b in requests])
    as64 = lambda x: x.detach().double().cpu().numpy()  # noqa: E731
    q = as64(problem.q)[q_rows]
    kv = RaggedKV(as64(problem.own_k)[own_rows], as64(problem.own_v)[own_rows],
                  np.arange(len(requests) + 1, dtype=np.int32) * p.own_len)
    level = PrefixLevel(as64(problem.prefix_k), as64(problem.prefix_v), np.array([0, p.prefix_len], dtype=np.int32),
                        np.zeros(len(requests), dtype=np.int32))
    ref = relaycore.relay_attention(q, np.arange(len(requests) + 1, dtype=np.int32) * n, kv, [level],
                                    causal=True, softmax_scale=problem.scale, backend="reference")
    out, lse, num_keys, score_abs, value_abs = (h[q_rows] for h in host)
    prec = bounds.precision("float64")
    ob = bounds.out_bound(out, value_abs, num_keys, score_abs, p.head_dim, prec)
    lb = bounds.lse_bound(lse, num_keys, score_abs, p.head_dim, prec)
    out_err = np.abs(np.asarray(ref.out) - out)
    lse_err = np.abs(np.asarray(ref.lse) - lse)
    if not (np.all(out_err <= ob) and np.all(lse_err <= lb)):
        raise AssertionError(
            f"the float64 oracle disagrees with relaycore.reference at {p.label}: "
            f"max out error {out_err.max():.3e} (bound there {ob.flat[out_err.argmax()]:.3e}), "
            f"max lse error {lse_err.max():.3e}"
        )
    return f"passed ({len(q_rows)} queries of requests {requests} against relaycore.reference)"


@dataclass
class Check:
    """The gate's verdict on one provider's output.

    Attributes:
        passed: every output within its bound, nothing NaN.
        worst: largest ``|error| / bound`` over the outputs (lse too, when given).
        message: what failed and where, or ``""``.
    """

    passed: bool
    worst: float
    message: str


def check(oracle: Oracle, out, lse: Optional["torch.Tensor"] = None) -> Check:
    """Compare a provider's output (``[B * q_len, Hq, D]``, any float dtype) and optionally its
    lse (``[B * q_len, Hq]``, natural log; compared where the oracle has an lse bound) with the
    oracle under the bounds of ``relaycore.bounds``."""
    import torch

    if tuple(out.shape) != tuple(oracle.out.shape):
        return Check(False, float("inf"), f"out: expected shape {tuple(oracle.out.shape)}, got {tuple(out.shape)}")
    worst, messages = 0.0, []
    pairs = [("out", out, oracle.out, oracle.out_bound)]
    if lse is not None and oracle.lse_bound is not None:
        pairs.append(("lse", lse, oracle.lse, oracle.lse_bound))
    for name, got, ref, bound in pairs:
        got = got.to(torch.float64)
        err = (got - ref).abs()
        bad = ~(err <= bound)  # NaN compares False: a NaN output fails
        ratio = torch.where(bound > 0, err / bound.clamp_min(torch.finfo(torch.float64).tiny),
                            torch.where(err == 0, 0.0, float("inf")))
        ratio = torch.nan_to_num(ratio, nan=float("inf"))
        worst = max(worst, float(ratio.max()))
        if bool(bad.any()):
            idx = tuple(int(i) for i in torch.nonzero(bad)[0])
            messages.append(f"{name}{list(idx)}: got {float(got[idx]):.6g}, expected {float(ref[idx]):.6g} "
                            f"within {float(bound[idx]):.3g} ({int(bad.sum())} elements out of bound)")
    return Check(not messages, worst, "; ".join(messages))
