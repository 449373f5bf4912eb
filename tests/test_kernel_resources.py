"""The partial kernel's occupancy, read on the CPU: the default configuration must keep the
programs per SM it was measured at (``relaycore.fast.triton.resources``), and the Gluon
single-pass tile of sm_90 must compile, fit and spill no more than it ran with. A change that adds
registers or shared memory fails here, in CI, before any GPU time is spent on it. Every kernel's
divisions must be of a kind the error bound prices (``PRICED_DIVISIONS``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

#: Programs per Hopper SM of each tile kind at the default fp16, D = 128 configuration, at which
#: the committed benchmarks ran (``fast/triton/NOTES.md``). Read from the sm_90 build with
#: triton 3.7 (2026-11-28, pages of 16 tokens as a constant): the own decode tile 142
#: registers and 72.5 KiB of shared memory at GQA 1 and 4 (steps of 128 keys,
#: ``Config.short_block_n``, session 12; 150 as the single pass of a request without a prefix,
#: which compiles no prefix walk: with it, 168 / 182 registers and 136 KiB, one per SM), the prefix tiles 178 and 183 with 112 and 128 KiB of
#: shared memory, the single-pass append tile 220 (it carries its pages,
#: ``Config.carries_pages``, 2026-11-28 session 8); with the fused merge (small batches) the
#: own tile 186 / 185 and the 64-row prefix tile 248 / 255 folding 16 rows at once, 204 / 255
#: folding 32 and 254 / 255 folding 64 (2026-11-28, session 11: fold slices built in their own
#: layout), none spilling; a graph plan's padded tiles, whose programs past the step's items
#: exit (2026-11-28, session 20), 140 / 168 (own, GQA 1 / 4, 72.5 KiB) and 178 / 188
#: (prefix, 112 / 128 KiB), and the padded single-pass append tile of a batch of two prefix
#: levels (2026-11-29, session 34) 220, as the unpadded one.
MEASURED = {
    "own decode tile, GQA 1": 3,
    "own decode tile, GQA 4": 3,
    "own decode tile, GQA 1, single pass without a prefix": 3,
    "own decode tile, GQA 4, single pass without a prefix": 3,
    "prefix tile of 64 rows": 2,
    "prefix tile of 128 rows": 1,
    "own append tile of 128 rows, single pass": 1,
    "own decode tile, GQA 1, fused merge": 2,
    "prefix tile of 64 rows, GQA 1, fused merge": 2,
    "own decode tile, GQA 4, fused merge": 2,
    "prefix tile of 64 rows, GQA 4, fused merge": 2,
    "prefix tile of 64 rows, GQA 1, fused merge of 32 rows": 2,
    "prefix tile of 64 rows, GQA 4, fused merge of 32 rows": 2,
    "prefix tile of 64 rows, GQA 1, fused merge of 64 rows": 2,
    "prefix tile of 64 rows, GQA 4, fused merge of 64 rows": 2,
    "own decode tile, GQA 1, padded": 3,
    "own decode tile, GQA 4, padded": 3,
    "prefix tile of 64 rows, padded": 2,
    "prefix tile of 128 rows, padded": 1,
    "own append tile of 128 rows, single pass, padded": 1,
}


#: The Gluon single-pass tile of sm_90 (``hopper.single_pass_tile``), which the interpreter
#: cannot run: (dtype, head_dim, paged, padded) -> spill-store bytes at which it ran on an H200
#: (2026-11-28, session 16, producer 88 / consumers 208 registers; read from the sm_90 build with
#: triton 3.7.1: the paged producer spills 4 bytes at D = 64, none at D = 128, where at 56
#: registers it spilled 60 and at 40 about 1 KB; a graph plan's padded tile, whose programs
#: past the step's items exit, the same, session 34). One program per SM: its shared memory
#: must fit Hopper's 227 KiB.
HOPPER_SPILLS = {(dtype, d, paged, padded): 4 if (paged and d == 64) else 0
                 for dtype in ("fp16", "bf16") for d in (64, 128) for paged in (False, True)
                 for padded in (False, True)}
HOPPER_SHARED_LIMIT = 227 * 1024

#: The floating-point divisions the kernels may hold: Triton's fp32 ``/`` (PTX ``div.full.f32``,
#: within 2 ulp, which ``rounding.DIVISION_STEPS`` prices; ``proofs/error_bound.py``, "Counting the
#: Triton kernels' steps") and ``tl.math.div_rn`` (``div.rn.f32``, rounded to nearest, priced the
#: more). Any other (``div.approx.f32``, within 2 ulp only for divisors in ``[2^-126, 2^126]``; a
#: ``rcp.approx`` and a product) is not priced: the proof would need a look first.
PRICED_DIVISIONS = {"div.full.f32", "div.rn.f32"}


def _ptxas_available() -> bool:
    """Imports triton: call it inside a test, never at collection (the interpreter tests must
    set ``TRITON_INTERPRET`` before triton is first imported)."""
    try:
        from triton import knobs

        return os.path.exists(knobs.nvidia.ptxas.path)
    except Exception:
        return False


def test_default_tiles_keep_their_measured_occupancy(tmp_path):
    if not _ptxas_available():
        pytest.skip("this triton has no NVIDIA backend with ptxas")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compile, do not interpret
    run = subprocess.run([sys.executable, "-m", "relaycore.fast.triton.resources"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    rows = {r["kind"]["name"]: r for r in lines if "kind" in r}
    hopper_rows = {(r["dtype"], r["head_dim"], r["paged"], r["padded"]): r for r in lines if "dtype" in r}
    merge, = [r["merge_divisions"] for r in lines if "merge_divisions" in r]
    assert set(rows) == set(MEASURED)
    assert not hopper_rows or set(hopper_rows) == set(HOPPER_SPILLS)  # empty: a triton without Gluon
    for key, r in hopper_rows.items():
        assert r["shared_bytes"] <= HOPPER_SHARED_LIMIT, (key, r)
        assert r["spill_bytes"] <= HOPPER_SPILLS[key], (key, r)
    # every kernel divides (a state's or a row's acc / l, the fold's acc / sum), and only as priced
    for key, divided in [("merge kernel", merge)] + [(k, r["divisions"]) for k, r in {**rows, **hopper_rows}.items()]:
        assert divided and set(divided) <= PRICED_DIVISIONS, (key, divided)
    for name, programs in MEASURED.items():
        r = rows[name]
        assert r["programs_per_sm"] >= programs, (
            f"{name}: {r['programs_per_sm']} programs per SM ({r['registers']} registers per thread, "
            f"{r['shared_bytes']} bytes of shared memory, {r['num_warps']} warps), measured at {programs}"
        )
