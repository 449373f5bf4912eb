"""``relaycore::relay_attention_planned``: the planned call as a ``torch.library`` custom op, so
that ``torch.compile`` traces a model that calls ``relay_attention(..., plan=)`` (or
``run_planned``) as one opaque op with known output shapes, and calls the kernels as they are;
``relaycore::relay_attention_planned_into``, the same call writing into result buffers
(``out=``, ``lse=``), which the compiler keeps in place.

A plan crosses the op boundary flattened: its device tensors as a tensor list, everything else
as a list of ints (``_pack``/``_unpack``).
"""

from __future__ import annotations

import dataclasses
from typing import List, Sequence, Tuple

import torch

from relaycore.types import AttentionState, PagedKV, PrefixLevel, RaggedKV, RequestKV

from relaycore.fast.triton.config import Config
from relaycore.fast.triton.launch import run_eager
from relaycore.fast.triton.plan import REGULAR_FIELDS, Launch, Plan

#: Every field of the configuration (all ints), in declaration order.
_CONFIG_FIELDS = tuple(field.name for field in dataclasses.fields(Config))


def _pack(plan: Plan) -> Tuple[List[torch.Tensor], List[int]]:
    tensors = [plan.slot_offsets, plan.arrivals]
    ints = [plan.total_q, plan.num_q_heads, plan.num_kv_heads, plan.head_dim, int(plan.paged), int(plan.causal),
            plan.num_slots, plan.num_levels, int(plan.relay), int(plan.fused_merge)]
    ints += [getattr(plan.config, name) for name in _CONFIG_FIELDS]
    ints.append(len(plan.launches))
    for launch in plan.launches:
        tensors += [launch.items, launch.tokens, launch.slots] + ([] if launch.count is None else [launch.count])
        ints += [launch.level, launch.block_m, int(launch.single_pass), int(launch.reads_prefix), launch.fold_rows,
                 int(launch.count is not None), len(launch.regular)]
        ints += list(launch.regular) or [0] * len(REGULAR_FIELDS)
    # after the launches' tensors, each flagged by one of the last three ints
    for x in (plan.merge_tokens, plan.merge_count, plan.pages_read):
        if x is not None:
            tensors.append(x)
        ints.append(int(x is not None))
    return tensors, ints


def _unpack(tensors: Sequence[torch.Tensor], ints: Sequence[int], q: torch.Tensor, softmax_scale: float) -> Plan:
    total_q, hq, hkv, d, paged, causal, num_slots, num_levels, relay, fused_merge = ints[:10]
    config = Config(**dict(zip(_CONFIG_FIELDS, ints[10 : 10 + len(_CONFIG_FIELDS)])))
    at = 10 + len(_CONFIG_FIELDS)
    width = 7 + len(REGULAR_FIELDS)  # ints per launch
    launches, t = [], 2  # the next launch's first tensor
    for i in range(ints[at]):
        first = at + 1 + width * i
        level, block_m, single_pass, reads_prefix, fold_rows, counted, regular = ints[first : first + 7]
        launches.append(Launch(level=level, block_m=block_m, single_pass=bool(single_pass),
                               reads_prefix=bool(reads_prefix), fold_rows=fold_rows,
                               regular=tuple(ints[first + 7 : first + 7 + regular]),
                               items=tensors[t], tokens=tensors[t + 1], slots=tensors[t + 2],
                               count=tensors[t + 3] if counted else None))
        t += 4 if counted else 3
    launches = tuple(launches)
    merge_tokens = tensors[t] if ints[-3] else None
    merge_count = tensors[t + ints[-3]] if ints[-2] else None
    return Plan(total_q=total_q, num_q_heads=hq, num_kv_heads=hkv, head_dim=d, dtype=str(q.dtype).replace("torch.", ""),
                paged=bool(paged), causal=bool(causal), softmax_scale=softmax_scale, config=config, num_slots=num_slots,
                slot_offsets=tensors[0], launches=launches, fused_merge=bool(fused_merge), arrivals=tensors[1],
                relay=bool(relay), device=str(q.device), num_levels=num_levels, merge_tokens=merge_tokens,
                merge_count=merge_count, pages_read=tensors[-1] if ints[-1] else None)


def _run(q, own, prefix_kv, plan_tensors, plan_ints, softmax_scale, out, lse) -> AttentionState:
    """``run_eager`` of the ops' flattened arguments, into ``out``/``lse`` (``None``: new ones)."""
    plan = _unpack(plan_tensors, plan_ints, q, softmax_scale)
    kv = PagedKV(own[0], own[1], own[2], None) if plan.paged else RaggedKV(own[0], own[1], None)
    prefixes = [PrefixLevel(prefix_kv[2 * i], prefix_kv[2 * i + 1], None, None) for i in range(len(prefix_kv) // 2)]
    return run_eager(plan, q, kv, prefixes, out, lse)


@torch.library.custom_op("relaycore::relay_attention_planned", mutates_args=())
def relay_attention_planned(q: torch.Tensor, own: List[torch.Tensor], prefix_kv: List[torch.Tensor],
                            plan_tensors: List[torch.Tensor], plan_ints: List[int],
                            softmax_scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """The op: ``own`` is ``[k, v]`` (ragged) or ``[k_cache, v_cache, block_table]`` (paged),
    ``prefix_kv`` is ``[k_0, v_0, k_1, v_1, ...]``; returns ``(out, lse)``."""
    out, lse = _run(q, own, prefix_kv, plan_tensors, plan_ints, softmax_scale, None, None)
    return out, lse


@relay_attention_planned.register_fake
def _(q, own, prefix_kv, plan_tensors, plan_ints, softmax_scale):
    return q.new_empty(q.shape), q.new_empty(q.shape[:2], dtype=torch.float32)


@torch.library.custom_op("relaycore::relay_attention_planned_into", mutates_args=("out", "lse"))
def relay_attention_planned_into(q: torch.Tensor, own: List[torch.Tensor], prefix_kv: List[torch.Tensor],
                                 plan_tensors: List[torch.Tensor], plan_ints: List[int], softmax_scale: float,
                                 out: torch.Tensor, lse: torch.Tensor) -> None:
    """``relay_attention_planned`` writing into ``out`` ``[total_q, Hq, D]`` and ``lse``
    ``[total_q, Hq]`` (a call with result buffers: the compiler keeps the writes in place)."""
    _run(q, own, prefix_kv, plan_tensors, plan_ints, softmax_scale, out, lse)


@relay_attention_planned_into.register_fake
def _(q, own, prefix_kv, plan_tensors, plan_ints, softmax_scale, out, lse):
    return None


def call_op(plan: Plan, q: torch.Tensor, kv: RequestKV, prefixes: Sequence[PrefixLevel], out=None,
            lse=None) -> AttentionState:
    """``run_planned`` through the op (what ``torch.compile`` sees): ``relay_attention_planned``,
    or with result buffers ``relay_attention_planned_into`` (a buffer not given is allocated)."""
    if isinstance(kv, PagedKV):  # the op's plan holds no block table: it gets the one the kernels read
        own = [kv.k_cache, kv.v_cache, kv.block_table if plan.block_table is None else plan.block_table]
    else:
        own = [kv.k, kv.v]
    prefix_kv = [t for level in prefixes for t in (level.k, level.v)]
    tensors, ints = _pack(plan)
    if out is None and lse is None:
        out, lse = torch.ops.relaycore.relay_attention_planned(q, own, prefix_kv, tensors, ints, plan.softmax_scale)
        return AttentionState(out, lse)
    out = q.new_empty(q.shape) if out is None else out
    lse = q.new_empty(q.shape[:2], dtype=torch.float32) if lse is None else lse
    torch.ops.relaycore.relay_attention_planned_into(q, own, prefix_kv, tensors, ints, plan.softmax_scale, out, lse)
    return AttentionState(out, lse)
