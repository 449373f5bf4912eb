"""Decode and append timings of the Triton backend against SDPA over the concatenated KV.

Run on the GPU machine: ``python3 tests/gpu/perf_decode.py OUT_DIR [decode|append|all|head_dims]``.
Each point is checked first (relative error against float32 math on the same inputs), then
timed two ways: ``triton.testing.do_bench`` through ``relay_attention(..., plan=)`` (median, cold L2: the peers' numbers in
``../shared/gpu/README.md`` were taken so) and CUDA-graph replay (launch cost removed).
Prints one line per point and writes them as JSON lines to ``OUT_DIR/perf_<grid>.jsonl``;
``head_dims`` writes ``OUT_DIR/head_dims.json`` instead, the committed
``docs/benchmarks/head_dims.json`` (``HEAD_DIM_POINTS``).
"""

from __future__ import annotations

import json
import math
import sys
import time

import torch
import torch.nn.functional as F
import triton
import triton.testing

from relaycore import PagedKV, PrefixLevel, relay_attention
from relaycore.fast.triton import prepare

PAGE = 16


def make_batch(batch, prefix, own, q_len, hq, hkv, d, dtype, gen):
    """One shared prefix, paged own KV (pages shuffled), ``q_len`` queries per request."""
    dev = "cuda"
    q = torch.randn(batch * q_len, hq, d, generator=gen, device=dev).to(dtype)
    pk = torch.randn(prefix, hkv, d, generator=gen, device=dev).to(dtype)
    pv = torch.randn(prefix, hkv, d, generator=gen, device=dev).to(dtype)
    pages_per = -(-own // PAGE)
    nb = batch * pages_per
    kc = torch.randn(nb, PAGE, hkv, d, generator=gen, device=dev).to(dtype)
    vc = torch.randn(nb, PAGE, hkv, d, generator=gen, device=dev).to(dtype)
    table = torch.randperm(nb, generator=gen, device=dev).to(torch.int32).view(batch, pages_per)
    kv = PagedKV(kc, vc, table, torch.full((batch,), own, dtype=torch.int32, device=dev))
    cu_q = torch.arange(0, batch + 1, dtype=torch.int32, device=dev) * q_len
    level = PrefixLevel(pk, pv, torch.tensor([0, prefix], dtype=torch.int32, device=dev),
                        torch.zeros(batch, dtype=torch.int32, device=dev))
    return q, cu_q, kv, [level]


def concat_kv(kv, level, batch, own, hkv, d):
    """[B, Hkv, prefix + own, D] dense copies (the SDPA baseline's inputs)."""
    kc = kv.k_cache[kv.block_table.long()].reshape(batch, -1, hkv, d)[:, :own]
    vc = kv.v_cache[kv.block_table.long()].reshape(batch, -1, hkv, d)[:, :own]
    k = torch.cat([level.k.unsqueeze(0).expand(batch, -1, -1, -1), kc], 1).transpose(1, 2).contiguous()
    v = torch.cat([level.v.unsqueeze(0).expand(batch, -1, -1, -1), vc], 1).transpose(1, 2).contiguous()
    return k, v


def sdpa_fn(q, k, v, batch, q_len, hq, hkv, causal_own):
    qb = q.view(batch, q_len, hq, -1).transpose(1, 2)
    mask = None
    if q_len > 1:
        ctx = k.shape[2]
        j = torch.arange(q_len, device=q.device)[:, None]
        t = torch.arange(ctx, device=q.device)[None, :]
        mask = t <= ctx - q_len + j
    return lambda: F.scaled_dot_product_attention(qb, k, v, attn_mask=mask, enable_gqa=hq != hkv)


def bench(fn):
    ms = triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
    g = triton.testing.do_bench_cudagraph(fn, rep=100, return_mode="median")
    return ms * 1000, g * 1000


def point(batch, prefix, own, q_len, hq, hkv, d, dtype, gen, bandwidth):
    q, cu_q, kv, prefixes = make_batch(batch, prefix, own, q_len, hq, hkv, d, dtype, gen)
    p = prepare(q, cu_q, kv, prefixes)
    fn = lambda: relay_attention(q, cu_q, kv, prefixes, plan=p)
    out, lse = fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(50):
        fn()
    host_us = (time.perf_counter() - t0) / 50 * 1e6
    torch.cuda.synchronize()
    k, v = concat_kv(kv, prefixes[0], batch, own, hkv, d)
    n = min(batch, 4)  # float32 check on a few requests (the dense copies of all would not fit)
    ref = sdpa_fn(q[: n * q_len].float(), k[:n].float(), v[:n].float(), n, q_len, hq, hkv, True)()
    ref = ref.transpose(1, 2).reshape(n * q_len, hq, d)
    err = ((out[: n * q_len].float() - ref).norm() / ref.norm()).item()
    t_us, g_us = bench(fn)
    s_us, sg_us = bench(sdpa_fn(q, k, v, batch, q_len, hq, hkv, True))
    elem = torch.finfo(dtype).bits // 8
    bytes_ = (prefix + batch * own) * hkv * d * 2 * elem + 2 * batch * q_len * hq * d * elem
    floor_us = bytes_ / bandwidth * 1e6
    flops = 4 * batch * q_len * hq * d * (prefix + own)
    row = dict(B=batch, prefix=prefix, own=own, q_len=q_len, Hq=hq, Hkv=hkv, D=d, dtype=str(dtype),
               rel_err=err, host_us=host_us, triton_us=t_us, triton_graph_us=g_us, sdpa_us=s_us, sdpa_graph_us=sg_us,
               floor_us=floor_us, tflops=flops / (g_us * 1e-6) / 1e12, slots=p.num_slots,
               items=[l.num_items for l in p.launches])
    del q, kv, prefixes, k, v
    return row


def copy_bandwidth():
    x = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    ms = triton.testing.do_bench(lambda: y.copy_(x), return_mode="median")
    return 2 * x.numel() / (ms * 1e-3)


def profile_host(gen):
    """Where the host time of one planned call goes (cProfile over 300 calls, top entries)."""
    import cProfile
    import io
    import pstats

    q, cu_q, kv, prefixes = make_batch(8, 2048, 128, 1, 32, 8, 128, torch.float16, gen)
    p = prepare(q, cu_q, kv, prefixes)
    for _ in range(3):
        relay_attention(q, cu_q, kv, prefixes, plan=p)
    torch.cuda.synchronize()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(300):
        relay_attention(q, cu_q, kv, prefixes, plan=p)
    prof.disable()
    torch.cuda.synchronize()
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(14)
    print(text.getvalue()[-3500:], flush=True)


#: ``head_dims``: each head_dim at each ``(B, prefix, own, q_len)``, Hq 32, Hkv 8, fp16: a head_dim
#: that is not a power of two against 128 (its tile's head axis is padded to the next power of
#: two; the Gluon tile of sm_90 takes 64 and 128 only).
HEAD_DIMS = (128, 96, 80)
HEAD_DIM_POINTS = ((32, 8192, 128, 1), (128, 8192, 128, 1), (4, 2048, 512, 512))


def head_dims(out_dir, gen, bandwidth):
    """Time ``HEAD_DIM_POINTS`` at each of ``HEAD_DIMS``; write ``OUT_DIR/head_dims.json``."""
    from relaycore.bench.results import environment

    rows = []
    for d in HEAD_DIMS:
        for b, pre, own, ql in HEAD_DIM_POINTS:
            row = point(b, pre, own, ql, 32, 8, d, torch.float16, gen, bandwidth)
            row["head_dim"] = d
            rows.append(row)
            print(f"D={d:3d} B={b:3d} p={pre:5d} q={ql:3d} err={row['rel_err']:.1e} graph {row['triton_graph_us']:7.1f} "
                  f"sdpa graph {row['sdpa_graph_us']:7.1f} floor {row['floor_us']:6.1f}", flush=True)
            torch.cuda.empty_cache()
    env = environment("cuda")
    doc = {
        "what": "head_dim " + " / ".join(map(str, HEAD_DIMS)) + " at Hkv 8, Hq 32, fp16, paged own KV "
                f"({PAGE}-token pages): decode B 32 and B 128 over a prefix of 8192 with 128 own tokens, append "
                "B 4 x 512 new tokens over a prefix of 2048; relaycore's Triton backend against SDPA over the "
                "concatenated KV, both as CUDA-graph replays (tests/gpu/perf_decode.py OUT head_dims); floor_us = "
                "bytes that must move / measured copy bandwidth",
        "environment": {key: env[key] for key in ("card", "driver", "torch", "triton")}
        | {"copy_bandwidth_TBps": round(bandwidth / 1e12, 2), "commit": env["commit"], "date": env["date"]},
        "rows": rows,
    }
    with open(f"{out_dir}/head_dims.json", "w") as f:
        json.dump(doc, f, indent=1)


def main():
    out_dir, grid = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "all")
    gen = torch.Generator(device="cuda").manual_seed(0)
    bw = copy_bandwidth()
    print(f"device {torch.cuda.get_device_name()} torch {torch.__version__} triton {triton.__version__} "
          f"copy bandwidth {bw / 1e12:.2f} TB/s", flush=True)
    profile_host(gen)
    if grid == "head_dims":
        head_dims(out_dir, gen, bw)
        return
    points = []
    if grid in ("decode", "all"):
        for hkv in (32, 8):
            for b in (1, 8, 32, 64, 128):
                for pre in (512, 2048, 8192, 16384):
                    points.append(("decode", b, pre, 128, 1, 32, hkv))
    if grid in ("append", "all"):
        for b in (4, 16):
            for new in (128, 512):
                for pre in (2048, 8192):
                    for hkv in (32, 8):
                        points.append(("append", b, pre, new, new, 32, hkv))
    with open(f"{out_dir}/perf_{grid}.jsonl", "w") as f:
        for name, b, pre, own, ql, hq, hkv in points:
            t0 = time.time()
            row = point(b, pre, own, ql, hq, hkv, 128, torch.float16, gen, bw)
            row["grid"] = name
            f.write(json.dumps(row) + "\n")
            f.flush()
            print(f"{name:6s} Hkv={hkv:2d} B={b:3d} p={pre:5d} own={own:3d} err={row['rel_err']:.1e} "
                  f"triton {row['triton_us']:7.1f} graph {row['triton_graph_us']:7.1f} | sdpa {row['sdpa_us']:7.1f} "
                  f"graph {row['sdpa_graph_us']:7.1f} | floor {row['floor_us']:6.1f} "
                  f"({row['floor_us'] / row['triton_graph_us'] * 100:4.0f}%) {row['tflops']:5.0f} TF/s host {row['host_us']:5.1f} [{time.time() - t0:.1f}s]",
                  flush=True)
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
