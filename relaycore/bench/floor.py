"""The physical floor of a point and the paper's analytical model.

The floor is what no implementation can beat on a card: the bytes that must cross device
memory (the shared prefix KV read once for the whole batch, every request's own KV once, the
queries read once and the outputs written once) over the copy bandwidth measured in the same
run, and the arithmetic (``QK^T`` and ``PV``, two flops per multiply-add, only over the keys
each query sees) over the matrix rate measured in the same run.
"""

from __future__ import annotations

from relaycore.bench.grids import Point

BYTES_PER_ELEMENT = {"float16": 2, "bfloat16": 2, "float32": 4}


def min_bytes(p: Point) -> int:
    """Bytes that must move: prefix K and V once, each request's own K and V once, q and out.

    Example:
        >>> from relaycore.bench.grids import Point
        >>> min_bytes(Point("decode", 1, 1, 1, 2, 3, 4, 1))   # (3 + 4) tokens * K,V * D=2 * 2 bytes + q, out
        64
    """
    e = BYTES_PER_ELEMENT[p.dtype]
    kv_tokens = p.prefix_len + p.batch * p.own_len
    kv = 2 * kv_tokens * p.num_kv_heads * p.head_dim * e
    q_and_out = 2 * p.batch * p.q_len * p.num_q_heads * p.head_dim * e
    return kv + q_and_out


def keys_seen(p: Point) -> int:
    """Sum over every query token of the keys it sees (per head): all prefix tokens, and own
    tokens up to its position (query ``j`` of ``q_len`` sees ``own_len - q_len + j + 1``)."""
    own = p.q_len * (p.own_len - p.q_len) + p.q_len * (p.q_len + 1) // 2
    return p.batch * (p.q_len * p.prefix_len + own)


def flops(p: Point) -> int:
    """Arithmetic of exact attention: ``4 * D`` flops per (query head, key seen) pair.

    Example:
        >>> from relaycore.bench.grids import Point
        >>> flops(Point("append", 1, 1, 1, 1, 0, 2, 2))      # keys seen 1 + 2 = 3
        12
    """
    return 4 * p.head_dim * p.num_q_heads * keys_seen(p)


def floor_seconds(p: Point, bandwidth: float, matmul_rate: float) -> dict:
    """``{"memory": bytes / bandwidth, "matmul": flops / rate}`` in seconds (bytes/s, flop/s)."""
    return {"memory": min_bytes(p) / bandwidth, "matmul": flops(p) / matmul_rate}


def paper_speedup(prefix_len: float, own_len: float, batch: float) -> float:
    """RelayAttention's predicted speedup over a per-request kernel (Zhu et al. 2024, A40,
    Llama-30B): ``(s + c + 2) / (s / b + c + 7)`` for prefix length ``s``, own context ``c``
    and batch ``b``.

    The per-request kernel reads ``s + c`` KV tokens per request plus a query and an output
    (the ``+ 2``); relay reads the prefix once per batch (``s / b`` per request) and pays
    about five tokens more for its partial states and their merge (the ``+ 7``). Both sides
    are modelled as bound by memory traffic alone.

    Example:
        >>> round(paper_speedup(2048, 128, 32), 2)
        10.94
    """
    return (prefix_len + own_len + 2) / (prefix_len / batch + own_len + 7)
