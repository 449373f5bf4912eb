"""What one program of the partial kernel needs of an SM, read without a GPU.

Triton compiles for any target on any machine, and the ``ptxas`` it ships reports the
registers per thread; the compiled kernel's metadata holds its shared memory. From the two,
``programs_per_sm`` is how many programs an SM holds at once: at decode the partial kernel is
bound by the latency of its KV loads, and occupancy is what hides it. A kernel change that
adds registers can halve it (measured on an H200, 2026-11-27: a variant at 189 registers per
thread for the 16-row own tile, against 122, ran large-batch decode 20-50% slower;
``fast/triton/NOTES.md``). ``tests/test_kernel_resources.py`` holds the default configuration
to the occupancy it was measured at, on the CPU, in CI.

The Gluon single-pass tile of sm_90 (``hopper``) is compiled here too (``hopper_tile``): the
CPU interpreter cannot run it, so CI checks that it compiles, fits in shared memory and does
not spill more than it was measured at.

Each compiled kernel also reports its floating-point divisions (``divisions``: the PTX
instructions, e.g. ``div.full.f32``, Triton's fp32 ``/``), the merge kernel's too
(``merge_divisions``): ``rounding.DIVISION_STEPS`` prices divisions within 2 ulp, and CI checks
that the kernels hold no other kind.

Run ``python -m relaycore.fast.triton.resources`` for the table of every tile kind.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from typing import List, Tuple

import triton

from relaycore.constants import LN2

from relaycore.fast.triton.config import Config, block_d, default_config
from relaycore.fast.triton.kernels import merge_kernel, partial_kernel
from relaycore.fast.triton.plan import MAX_FOLD_ROWS, MIN_FOLD_ROWS


@dataclass(frozen=True)
class SM:
    """The limits of one streaming multiprocessor (defaults: Hopper, compute capability 9.0).

    Attributes:
        registers: 32-bit registers per SM.
        register_granule: registers are allocated per warp in multiples of this many.
        shared_bytes: shared memory per SM usable by programs.
        shared_reserved: shared memory the system reserves per resident program.
        max_warps: resident warps per SM.
        max_programs: resident programs (thread blocks) per SM.
    """

    registers: int = 65536
    register_granule: int = 256
    shared_bytes: int = 228 * 1024
    shared_reserved: int = 1024
    max_warps: int = 64
    max_programs: int = 32


HOPPER = SM()

#: Tokens per page of the paged tile kinds (vLLM's and the benchmarks' default).
PAGE_SIZE = 16


@dataclass(frozen=True)
class TileKind:
    """One specialization of the partial kernel, as a launch of a plan compiles it.

    Attributes:
        name: what it is for, e.g. ``"own decode tile"``.
        block_m: tile height.
        paged, causal: the KV source (the own KV is paged, in pages of ``PAGE_SIZE`` tokens,
            and causal in a serving step; a prefix's is neither).
        group: query heads per KV head.
        fused_merge: whether its programs fold the states they finish (a small batch's plan).
        single_pass: whether it walks a request's context in one pass and writes the result
            (``plan.single_pass_requests``).
        prefix: with ``single_pass``, whether it walks a prefix first (an append request's own
            tile; a decode request's without a prefix does not, ``Launch.reads_prefix``).
        fold_rows: with ``fused_merge``, the rows it folds at once (``plan.fold_height``).
        padded: its grid is a graph plan's capacity, and the programs past the step's item
            count exit (``plan.Launch.count``).
    """

    name: str
    block_m: int
    paged: bool
    causal: bool
    group: int
    fused_merge: bool = False
    single_pass: bool = False
    prefix: bool = True
    fold_rows: int = MIN_FOLD_ROWS
    padded: bool = False


@dataclass(frozen=True)
class Resources:
    """What one program of a tile kind takes.

    Attributes:
        kind: the tile kind.
        num_warps: warps per program.
        registers: registers per thread (ptxas).
        shared_bytes: dynamic shared memory per program.
        divisions: the floating-point division instructions of its PTX (``divisions``).
    """

    kind: TileKind
    num_warps: int
    registers: int
    shared_bytes: int
    divisions: Tuple[str, ...] = ()

    def programs_per_sm(self, sm: SM = HOPPER) -> int:
        """Resident programs per SM: the least of the register, shared-memory, warp and
        program limits."""
        per_warp = -(-self.registers * 32 // sm.register_granule) * sm.register_granule
        by_registers = sm.registers // (per_warp * self.num_warps)
        by_shared = sm.shared_bytes // (self.shared_bytes + sm.shared_reserved)
        return min(by_registers, by_shared, sm.max_warps // self.num_warps, sm.max_programs)


def tile_kinds(config: Config) -> List[TileKind]:
    """The tile kinds a serving step with GQA 1 and 4 compiles: the own tile of a decode request
    (``min_block_m`` rows, paged, causal), and of one that sees no prefix and reads its own KV in
    one chunk (single pass, no prefix walk), the two prefix tile heights, the own tile of an
    append request (``block_m`` rows, single pass), then the own and prefix tiles of a small batch,
    which fold the states themselves (``plan.merge_in_partials``), at GQA 1 and 4 (the prefix
    tile at each fold height, ``plan.fold_height``: a 16-row fold reads its first slice's rows
    before the key loop, taller ones after it), and the own and prefix tiles of a graph plan's
    padded launches (``plan.Launch.count``: the single-pass one where the batch has two prefix
    levels or more)."""
    kinds = [TileKind(f"own decode tile, GQA {g}", config.min_block_m, True, True, g) for g in (1, 4)]
    kinds += [TileKind(f"own decode tile, GQA {g}, single pass without a prefix", config.min_block_m, True, True, g,
                       single_pass=True, prefix=False) for g in (1, 4)]
    tall = sorted({config.prefix_block_m, config.block_m})
    kinds += [TileKind(f"prefix tile of {m} rows", m, False, False, 1) for m in tall]
    kinds += [TileKind(f"own append tile of {config.block_m} rows, single pass", config.block_m, True, True, 1,
                       single_pass=True)]
    for g in (1, 4):
        kinds += [TileKind(f"own decode tile, GQA {g}, fused merge", config.min_block_m, True, True, g, True),
                  TileKind(f"prefix tile of {config.prefix_block_m} rows, GQA {g}, fused merge",
                           config.prefix_block_m, False, False, g, True),
                  *(TileKind(f"prefix tile of {config.prefix_block_m} rows, GQA {g}, fused merge of {rows} rows",
                             config.prefix_block_m, False, False, g, True, fold_rows=rows)
                    for rows in (2 * MIN_FOLD_ROWS, MAX_FOLD_ROWS))]
    kinds += [TileKind(f"own decode tile, GQA {g}, padded", config.min_block_m, True, True, g, padded=True)
              for g in (1, 4)]
    kinds += [TileKind(f"prefix tile of {m} rows, padded", m, False, False, 1, padded=True) for m in tall]
    kinds += [TileKind(f"own append tile of {config.block_m} rows, single pass, padded", config.block_m, True, True, 1,
                       single_pass=True, padded=True)]
    return kinds


def _signature(fn, constexprs: dict, pointer_type, descriptor=None):
    """``fn``'s signature for ``triton.compile`` and the attributes that make its pointers and
    strides 16-byte aligned, as in a serving call (they decide which loads are vectorized and
    pipelined, and with it the shared memory): ``pointer_type(name)`` gives a pointer's element
    type, ``descriptor(name)`` a tensor descriptor's type (Gluon). Strides divisible by 16 are
    those of a head_dim that is a multiple of 16; for another, this is a kernel no call runs."""
    signature, aligned = {}, []
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_desc"):
            signature[name] = descriptor(name)
        elif name.endswith("_ptr"):
            signature[name] = "*" + pointer_type(name)
            aligned.append(i)
        elif name == "qk_scale":
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
            if name.startswith("stride_") and name != "stride_table":
                aligned.append(i)
    return signature, {(i,): [["tt.divisibility", 16]] for i in aligned}


def _ptxas_info(ptx: str, arch: int) -> Tuple[int, int]:
    """``(registers per thread, spill-store bytes)`` as ``ptxas -v`` reports them."""
    from triton import knobs

    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as f:
        f.write(ptx)
        f.flush()
        run = subprocess.run([knobs.nvidia.ptxas.path, "-v", f"--gpu-name=sm_{arch}a", f.name, "-o", "/dev/null"],
                             capture_output=True, text=True, check=True)
    report = run.stdout + run.stderr
    found = re.search(r"Used (\d+) registers", report)
    if found is None:
        raise RuntimeError(f"ptxas -v reported no register count: {run.stderr[-400:]}")
    spills = re.search(r"(\d+) bytes spill stores", report)
    return int(found.group(1)), int(spills.group(1)) if spills else 0


def resources(kind: TileKind, config: Config, *, head_dim: int = 128, dtype: str = "fp16",
              arch: int = 90) -> Resources:
    """Compile the partial kernel for ``kind`` under ``config`` for ``sm_<arch>`` and read what
    a program takes. Pointers and strides are taken as 16-byte aligned (``_signature``).

    Args:
        kind: the tile kind.
        config: the launch configuration.
        head_dim: ``D``.
        dtype: Triton's name of q's dtype (``"fp16"``, ``"bf16"``, ``"fp32"``).
        arch: the compute capability, as an integer (90: Hopper).

    Raises:
        RuntimeError: ``triton`` cannot compile for the target here (its NVIDIA backend or
            ``ptxas`` is missing).
    """
    fn = partial_kernel
    if not isinstance(fn, triton.runtime.JITFunction):
        raise RuntimeError("the kernels were imported under TRITON_INTERPRET=1: compile them in a process without it")
    pointer_types = {"q_ptr": dtype, "k_ptr": dtype, "v_ptr": dtype, "pre_k_ptr": dtype, "pre_v_ptr": dtype,
                     "part_out_ptr": "fp32", "part_lse_ptr": "fp32", "out_ptr": dtype, "lse_ptr": "fp32"}
    constexprs = dict(NUM_Q_HEADS=32 * kind.group, GROUP=kind.group, HEAD_DIM=head_dim, BLOCK_D=block_d(head_dim),
                      BLOCK_M=kind.block_m,
                      BLOCK_N=config.block_n_for(kind.block_m, own=kind.paged), PAGED=kind.paged,
                      PAGE_SIZE=PAGE_SIZE if kind.paged else 1,
                      CAUSAL=kind.causal, UPCAST=False,
                      DOT_PRECISION="ieee", FUSED_MERGE=kind.fused_merge,
                      SPLIT_UNMASKED=kind.block_m >= config.unmasked_min_block_m,
                      CARRY_PAGES=kind.paged and config.carries_pages(kind.block_m),
                      SINGLE_PASS=kind.single_pass, PREFIX=kind.single_pass and kind.prefix, ITEMS_LISTED=True,
                      FOLD_M=min(kind.fold_rows, kind.block_m), LN2=LN2, PADDED=kind.padded)
    signature, attrs = _signature(fn, constexprs, lambda name: pointer_types.get(name, "i32"))
    source = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    warps = config.warps(kind.block_m)
    try:
        compiled = triton.compile(source, target=triton.backends.compiler.GPUTarget("cuda", arch, 32),
                                  options=dict(num_warps=warps, num_stages=config.num_stages))
        registers, _ = _ptxas_info(compiled.asm["ptx"], arch)
    except (ImportError, OSError, subprocess.CalledProcessError) as exc:
        raise RuntimeError(f"cannot compile for sm_{arch} here: {type(exc).__name__}: {exc}") from exc
    return Resources(kind, warps, registers, int(compiled.metadata.shared), divisions(compiled.asm["ptx"]))


@dataclass(frozen=True)
class HopperTile:
    """What one program of ``hopper.single_pass_tile`` takes, as compiled for sm_90.

    Attributes:
        dtype, head_dim: q's Triton dtype name and ``D``.
        paged: whether the own KV is a paged cache (pages of ``PAGE_SIZE``, one box each).
        padded: a graph plan's launch, whose programs past the step's items exit
            (``plan.Launch.count``).
        shared_bytes: dynamic shared memory per program (one program per SM).
        spill_bytes: bytes of spill stores (ptxas), over all partitions.
        divisions: the floating-point division instructions of its PTX (``divisions``).
    """

    dtype: str
    head_dim: int
    paged: bool
    padded: bool
    shared_bytes: int
    spill_bytes: int
    divisions: Tuple[str, ...] = ()


def hopper_tile(dtype: str, head_dim: int, paged: bool, *, padded: bool = False, arch: int = 90) -> HopperTile:
    """Compile the Gluon single-pass tile (``hopper.single_pass_tile``) for ``sm_<arch>`` with
    the launch's constants: listed items, causal own KV, ragged (one box per block) or paged in
    pages of ``PAGE_SIZE`` (one box per page), a count of items or not (``padded``). The CPU
    interpreter cannot run Gluon; this is what CI can check of it.

    Raises:
        RuntimeError: this triton has no Gluon, or cannot compile for the target here.
    """
    from relaycore.fast.triton import hopper

    if hopper.gluon is None:
        raise RuntimeError("this triton has no Gluon (triton.experimental.gluon)")
    from triton.experimental.gluon._runtime import GluonASTSource

    gl = hopper.gl
    gl_dtype = {"fp16": gl.float16, "bf16": gl.bfloat16}[dtype]
    own_box = PAGE_SIZE if paged else hopper.BLOCK_N

    def descriptor(rows: int) -> str:
        layout = gl.NVMMASharedLayout.get_default_for([rows, head_dim], gl_dtype)
        return f"tensordesc<{dtype}[{rows}, {head_dim}],{layout!r}>"

    constexprs = hopper.constexprs(32, 4, head_dim, paged, PAGE_SIZE if paged else 1, True, True, own_box, padded)
    pointer_types = {"q_ptr": dtype, "pre_k_ptr": dtype, "pre_v_ptr": dtype, "k_ptr": dtype, "v_ptr": dtype,
                     "out_ptr": dtype, "lse_ptr": "fp32"}
    signature, attrs = _signature(hopper.single_pass_tile, constexprs, lambda name: pointer_types.get(name, "i32"),
                                  lambda name: descriptor(own_box if name.startswith("own") else hopper.BLOCK_N))
    source = GluonASTSource(fn=hopper.single_pass_tile, signature=signature, constexprs=constexprs, attrs=attrs)
    try:
        compiled = triton.compile(source, target=triton.backends.compiler.GPUTarget("cuda", arch, 32),
                                  options=dict(num_warps=4))
        _, spills = _ptxas_info(compiled.asm["ptx"], arch)
    except (ImportError, OSError, subprocess.CalledProcessError) as exc:
        raise RuntimeError(f"cannot compile for sm_{arch} here: {type(exc).__name__}: {exc}") from exc
    return HopperTile(dtype, head_dim, paged, padded, int(compiled.metadata.shared), spills,
                      divisions(compiled.asm["ptx"]))


def divisions(ptx: str) -> Tuple[str, ...]:
    """The floating-point division and reciprocal instructions of ``ptx`` (``div.full.f32``,
    ``div.rn.f32``, ``rcp.approx.f32``, ...), sorted, each once; integer divisions are left out."""
    return tuple(sorted(set(re.findall(r"\b(?:div|rcp)(?:\.[a-z0-9]+)*\.f(?:16|32|64)\b", ptx))))


def merge_divisions(dtype: str = "fp16", head_dim: int = 128, arch: int = 90) -> Tuple[str, ...]:
    """``divisions`` of the merge kernel compiled for ``sm_<arch>`` (its fold, ``fold_row``).

    Raises:
        RuntimeError: ``triton`` cannot compile for the target here.
    """
    if not isinstance(merge_kernel, triton.runtime.JITFunction):
        raise RuntimeError("the kernels were imported under TRITON_INTERPRET=1: compile them in a process without it")
    constexprs = dict(NUM_Q_HEADS=32, HEAD_DIM=head_dim, BLOCK_D=block_d(head_dim), TOKENS_LISTED=True,
                      TOKENS_COUNTED=False, LN2=LN2)
    pointer_types = {"part_out_ptr": "fp32", "part_lse_ptr": "fp32", "out_ptr": dtype, "lse_ptr": "fp32"}
    signature, attrs = _signature(merge_kernel, constexprs, lambda name: pointer_types.get(name, "i32"))
    source = triton.compiler.ASTSource(fn=merge_kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    try:
        compiled = triton.compile(source, target=triton.backends.compiler.GPUTarget("cuda", arch, 32),
                                  options=dict(num_warps=4))
    except (ImportError, OSError, subprocess.CalledProcessError) as exc:
        raise RuntimeError(f"cannot compile for sm_{arch} here: {type(exc).__name__}: {exc}") from exc
    return divisions(compiled.asm["ptx"])


def main() -> int:
    """Print, as JSON lines, the merge kernel's divisions (``{"merge_divisions": [...]}``), what
    every tile kind of the fp16, ``D = 128`` default takes, then (where this triton has Gluon)
    the single-pass tile of sm_90 for fp16/bf16, ``D`` 64/128, ragged and paged, padded (a graph
    plan's) and not."""
    print(json.dumps({"merge_divisions": list(merge_divisions())}), flush=True)
    config = default_config(128, "float16", 8)
    for kind in tile_kinds(config):
        r = resources(kind, config)
        print(json.dumps(dict(asdict(r), programs_per_sm=r.programs_per_sm())), flush=True)
    from relaycore.fast.triton import hopper

    if hopper.gluon is not None:
        for dtype in ("fp16", "bf16"):
            for head_dim in (64, 128):
                for paged in (False, True):
                    for padded in (False, True):
                        print(json.dumps(asdict(hopper_tile(dtype, head_dim, paged, padded=padded))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
