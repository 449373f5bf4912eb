"""Timing: CUDA events over CUDA-graph replays with a cold L2, and the card's two ceilings.

Every timed call is first warmed up, then (where the provider allows it) captured in a CUDA
graph, so that Python launch cost does not decide the small decode points. Before each
replay a buffer larger than the L2 cache is overwritten, so the KV comes from device memory as
it does in serving (where every other layer's data passes through L2 between two calls of
one layer). The events bracket the call alone; the flush is outside them.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional, Tuple

#: Warm-up calls before capture and timing (compilation, autotuning, caches).
WARMUP = 3
#: Then, before the timed replays, at least this many seconds (host clock) of replays, each
#: after an L2 flush as when timed. Without it the provider timed first at a point, right after
#: the oracle's host work, ran slow: one configuration timed twice in a row read 131.6 then
#: 118.0 us (H100, batch 64; with the warm-up 117.2 then 116.9; ``fast/triton/NOTES.md``,
#: session 7), which favoured the providers timed later.
WARMUP_S = 0.03
#: Timed replays: at least ``MIN_REPS``, at most ``MAX_REPS``, aiming at ``BUDGET_S`` of work.
MIN_REPS, MAX_REPS, BUDGET_S = 10, 200, 0.1
#: The L2 flush buffer is this many times the L2 size, and at least ``MIN_FLUSH_BYTES``.
FLUSH_FACTOR, MIN_FLUSH_BYTES = 4, 256 << 20


@dataclass
class Timing:
    """Distribution of one call's time (seconds).

    Attributes:
        median_s, p10_s, p90_s: median and the 10th/90th percentiles over the replays.
        reps: replays timed.
        graphed: timed as CUDA-graph replays.
        note: why not graphed, when it was allowed but capture failed.
    """

    median_s: float
    p10_s: float
    p90_s: float
    reps: int
    graphed: bool
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _quantile(xs, q: float) -> float:
    xs = sorted(xs)
    pos = q * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(seconds, graphed: bool, note: str = "") -> Timing:
    """A ``Timing`` from a list of per-call times in seconds."""
    return Timing(statistics.median(seconds), _quantile(seconds, 0.1), _quantile(seconds, 0.9), len(seconds), graphed, note)


def _reps(estimate_s: float) -> int:
    return int(min(MAX_REPS, max(MIN_REPS, BUDGET_S / max(estimate_s, 1e-9))))


class CudaTimer:
    """Times calls on one CUDA device (events, graphs, cold L2)."""

    def __init__(self, device) -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device)
        l2 = int(getattr(torch.cuda.get_device_properties(self.device), "L2_cache_size", 0) or 0)
        self.flush_bytes = max(FLUSH_FACTOR * l2, MIN_FLUSH_BYTES)
        self._flush = torch.empty(self.flush_bytes // 4, dtype=torch.int32, device=self.device)

    def capture(self, fn: Callable[[], object]) -> Tuple[Optional[Callable[[], None]], object, str]:
        """Capture ``fn`` in a CUDA graph.

        Returns:
            ``(replay, output, "")`` where ``output`` is the tensors the graph writes on each
            replay, or ``(None, None, reason)`` when capture fails.
        """
        torch = self.torch
        try:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(2):
                    fn()
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                output = fn()
        except Exception as exc:  # capture refused: host sync, unsupported op, ...
            torch.cuda.synchronize(self.device)
            return None, None, f"capture failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        return graph.replay, output, ""

    def time(self, call: Callable[[], object], graphed: bool, note: str = "") -> Timing:
        """Time ``call`` (a graph replay or an eager call) with a cold L2 before each run."""
        torch = self.torch
        for _ in range(WARMUP):
            call()
        torch.cuda.synchronize(self.device)
        started = time.perf_counter()
        while time.perf_counter() - started < WARMUP_S:
            for _ in range(8):  # replays queued between two reads of the host clock
                self._flush.zero_()
                call()
            torch.cuda.synchronize(self.device)
        estimate = self._events(call, 3)
        seconds = self._events(call, _reps(statistics.median(estimate)))
        return summarize(seconds, graphed, note)

    def _events(self, call, reps: int):
        torch = self.torch
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        for start, end in zip(starts, ends):
            self._flush.zero_()
            start.record()
            call()
            end.record()
        torch.cuda.synchronize(self.device)
        return [s.elapsed_time(e) * 1e-3 for s, e in zip(starts, ends)]


class CpuTimer:
    """Times calls on the CPU with ``time.perf_counter`` (no graphs, no cache flush)."""

    def capture(self, fn):
        return None, None, "CPU: no CUDA graphs"

    def time(self, call: Callable[[], object], graphed: bool = False, note: str = "") -> Timing:
        for _ in range(WARMUP):
            call()
        estimate = self._clock(call, 3)
        return summarize(self._clock(call, _reps(statistics.median(estimate))), False, note)

    @staticmethod
    def _clock(call, reps: int):
        seconds = []
        for _ in range(reps):
            t0 = time.perf_counter()
            call()
            seconds.append(time.perf_counter() - t0)
        return seconds


def ceilings(device, timer) -> dict:
    """The card's two ceilings, and the cost of one call, measured now.

    Copy: a device-to-device copy of a buffer far larger than any cache, counting the bytes
    read plus the bytes written. Matmul: a large square bf16 product (fp32 on the CPU), two
    flops per multiply-add. Inputs are random (zeros can run faster than real data). Call: one
    kernel that adds 1 to one element, captured and timed as every provider is (a CUDA-graph
    replay after an L2 flush): what a call costs before it moves any data, which no provider
    avoids.

    Returns:
        ``{"copy_bytes_per_s", "matmul_flops_per_s", "call_s", "copy_bytes", "matmul_n",
        "matmul_dtype", "copy_timing", "matmul_timing", "call_timing"}``.
    """
    import torch

    dev = torch.device(device)
    cuda = dev.type == "cuda"
    nbytes = (1 << 30) if cuda else (64 << 20)
    src = torch.randn(nbytes // 2, dtype=torch.float16, device=dev)
    dst = torch.empty_like(src)
    copy = timer.time(lambda: dst.copy_(src), graphed=False)
    del src, dst
    n = 8192 if cuda else 1024
    dtype = torch.bfloat16 if cuda else torch.float32
    a = torch.randn(n, n, dtype=dtype, device=dev)
    b = torch.randn(n, n, dtype=dtype, device=dev)
    mm = timer.time(lambda: a @ b, graphed=False)
    one = torch.zeros(1, device=dev)
    bump = lambda: one.add_(1)  # noqa: E731
    replay, _, _ = timer.capture(bump)
    call = timer.time(replay, graphed=True) if replay is not None else timer.time(bump, graphed=False)
    return {
        "copy_bytes_per_s": 2 * nbytes / copy.median_s,
        "matmul_flops_per_s": 2 * n**3 / mm.median_s,
        "call_s": call.median_s,
        "copy_bytes": nbytes,
        "matmul_n": n,
        "matmul_dtype": str(dtype).replace("torch.", ""),
        "copy_timing": copy.to_dict(),
        "matmul_timing": mm.to_dict(),
        "call_timing": call.to_dict(),
    }
