"""``relaycore verify``: passes a correct backend, fails wrong functions with a case that its
printed command reproduces."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import numpy as np
import pytest

import relaycore
from relaycore import cli

pytest.importorskip("torch")

REPRODUCE = re.compile(r"reproduce: (relaycore verify .*)")


def verify(capsys, *args: str):
    status = cli.main(["verify", *args])
    return status, capsys.readouterr().out


def test_torch_backend_passes(capsys):
    status, out = verify(capsys, "--backend", "torch", "--cases", "40", "--seed", "100")
    assert status == 0, out
    assert "ran on: torch (40 cases)" in out
    assert "PASS: 38 of 40 cases within the bounds of relaycore.bounds, 2 with no query row to check" in out
    assert re.search(r"worst out error: [0-9.e-]+ of the bound \(seed \d+, \w+\)", out)


def test_every_drawn_head_dim_runs_on_every_backend():
    from relaycore.fast.triton.config import MAX_HEAD_DIM
    from relaycore.verify import SPACES

    assert all(d <= MAX_HEAD_DIM for space in SPACES.values() for d in space["head_dims"])


def test_auto_and_float64_reference_pass(capsys):
    status, out = verify(capsys, "--cases", "10", "--dtype", "float64")
    assert status == 0 and "ran on: reference (10 cases)" in out, out
    assert "worst out error: 0 of the bound" in out


@pytest.mark.parametrize("function", ["wrong_attention:ignore_prefix", "wrong_attention:merge_with_wrong_sign"])
def test_a_wrong_function_fails_with_a_reproducible_case(capsys, function):
    status, out = verify(capsys, "--function", function, "--cases", "12", "--seed", "7")
    assert status == 1, out
    assert re.search(r"FAIL: \d+ of 12 cases failed", out)
    commands = REPRODUCE.findall(out)
    assert commands, out
    command = shlex.split(commands[0])
    assert command[:4] == ["relaycore", "verify", "--function", function]
    seed = command[command.index("--seed") + 1]
    first_report = out[out.index(f"case seed {seed} ("):].split("reproduce:")[0]

    status, again = verify(capsys, *command[2:])
    assert status == 1, again
    assert "FAIL: 1 of 1 cases failed" in again
    assert again[again.index(f"case seed {seed} ("):].split("reproduce:")[0] == first_report  # same case, same errors


def test_console_command():
    run = subprocess.run([sys.executable, "-m", "relaycore", "verify", "--backend", "torch", "--cases", "3"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "PASS: 3 of 3 cases" in run.stdout


def test_setup_problems_exit_with_status_two(capsys):
    status = cli.main(["verify", "--function", "no_such_module:fn", "--cases", "1"])
    assert status == 2 and "cannot load 'no_such_module:fn'" in capsys.readouterr().err
    status = cli.main(["verify", "--function", "missing-colon"])
    assert status == 2 and "expected MODULE:FUNCTION, got 'missing-colon'" in capsys.readouterr().err
    status = cli.main(["verify", "--backend", "torch", "--dtype", "float64"])
    assert status == 2 and "only the reference backend takes" in capsys.readouterr().err
    status = cli.main(["verify", "--function", "os:sep"])
    assert status == 2 and "--function: 'os:sep' is not callable" in capsys.readouterr().err
    status = cli.main(["verify", "--cases", "0"])
    assert status == 2 and "--cases: expected at least 1, got 0" in capsys.readouterr().err
    status = cli.main(["verify", "--dtype", "float64", "--device", "cuda"])
    assert status == 2 and "NumPy arrays, which live on the CPU" in capsys.readouterr().err
    status = cli.main(["verify", "--seed", "-5"])  # NumPy refuses it: no traceback, exit 2
    err = capsys.readouterr().err
    assert status == 2 and "--seed: expected an int >= 0 (NumPy seeds are non-negative), got -5" in err
    status = cli.main(["verify", "--dtype", "float64", "float16"])
    assert status == 2 and "--dtype: expected float64 alone" in capsys.readouterr().err
    # values beyond float16's range: make_batch refuses the batch, which is no fault of the backend
    status = cli.main(["verify", "--backend", "torch", "--dtype", "float16", "--cases", "1", "--space",
                       "score_magnitudes=(1e30,)"])
    err = capsys.readouterr().err
    assert status == 2 and ("case seed 0 (float16): make_batch refuses the drawn batch (score_magnitude: expected q "
                            "and k (normal, of standard deviation") in err
    # lengths past what NumPy draws: no make_batch refusal, so no advice on --space, only the error
    status = cli.main(["verify", "--dtype", "float64", "--cases", "1", "--space", f"max_kv_len={2**63}"])
    err = capsys.readouterr().err
    assert status == 2 and "case seed 0 (float64): random_batch cannot draw the batch (ValueError: " in err
    assert "make_batch" not in err and "narrow" not in err
    # scores beyond float64's range: the oracle refuses the batch
    status = cli.main(["verify", "--dtype", "float64", "--cases", "1", "--space", "score_magnitudes=(1e308,)"])
    err = capsys.readouterr().err
    assert status == 2 and "case seed 0 (float64): the oracle refuses the drawn batch (q: expected scores" in err
    import torch

    if not torch.cuda.is_available():
        status = cli.main(["verify", "--device", "cuda"])
        assert status == 2 and "torch sees no CUDA device" in capsys.readouterr().err


def test_triton_on_the_cpu_without_the_interpreter_cannot_start(capsys, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    status = cli.main(["verify", "--backend", "triton", "--device", "cpu", "--cases", "2"])
    assert status == 2
    assert "TRITON_INTERPRET=1" in capsys.readouterr().err


def test_a_crashing_function_is_a_failing_case(capsys):
    status, out = verify(capsys, "--function", "wrong_attention:crash", "--cases", "2")
    assert status == 1, out
    assert "raised RuntimeError: kernel launch failed" in out
    assert "reproduce: relaycore verify --function wrong_attention:crash --seed 0 --cases 1" in out
    assert "ran on: nothing (every case raised)" in out


def decode_on_pages_of_16_at_d16(q, cu_seqlens_q, kv, prefixes, *, causal=True, softmax_scale=None):
    """A kernel that takes only what ``--space`` narrows the batches to below: it refuses the rest."""
    if not (isinstance(kv, relaycore.PagedKV) and kv.k_cache.shape[1] == 16 and q.shape[-1] == 16):
        raise NotImplementedError(f"not a paged cache of pages of 16 at head_dim 16: {type(kv).__name__}, {q.shape}")
    if not bool((cu_seqlens_q.diff() == 1).all()):
        raise NotImplementedError(f"not a decode batch: q_lens {cu_seqlens_q.diff().tolist()}")
    return relaycore.relay_attention(q, cu_seqlens_q, kv, prefixes, causal=causal, softmax_scale=softmax_scale,
                                     backend="torch")


NARROW = ["--space", "head_dims=(16,)", "--space", 'layouts=("paged",)', "--space", "block_sizes=[16]",
          "--space", "min_q_len=1", "--space", "max_q_len=1"]


def test_space_narrows_the_batches_to_what_a_kernel_takes(capsys):
    status, out = verify(capsys, "--function", "test_verify:decode_on_pages_of_16_at_d16", "--cases", "30")
    assert status == 1 and "raised NotImplementedError" in out, out  # the default batches: refused
    status, out = verify(capsys, "--function", "test_verify:decode_on_pages_of_16_at_d16", "--cases", "30", *NARROW)
    assert status == 0, out
    assert "q_len 1..1" in out and "D in (16,)" in out and out.rstrip().endswith("PASS: 30 of 30 cases within the "
                                                                                 "bounds of relaycore.bounds")


@pytest.mark.parametrize("blocking, said", [
    (["--merge", "pairwise"], "merged pairwise"),
    (["--merge", "running", "--fast-division"], "merged one at a time, rescaled as the maximum grows, divisions within "
                                                "2 ulp"),
    (["--chunk-from", "request", "--merge", "pairwise"], "cut from each request's first key across its segments, "
                                                         "merged pairwise"),
])
def test_a_failing_case_reproduces_with_its_space_and_blocking(capsys, blocking, said):
    status, out = verify(capsys, "--function", "wrong_attention:ignore_prefix", "--cases", "12", "--seed", "7",
                         "--block-n", "16", "--chunk", "8", *blocking, *NARROW)
    assert status == 1, out
    assert f"bound: the steps of blocks of 16 keys, parts of 8 keys, {said}" in out
    command = shlex.split(REPRODUCE.findall(out)[0])
    assert command[command.index("--block-n"):] == ["--block-n", "16", "--chunk", "8", *blocking]
    assert [command[i + 1] for i, x in enumerate(command) if x == "--space"] == NARROW[1::2]
    seed = command[command.index("--seed") + 1]
    first_report = out[out.index(f"case seed {seed} ("):].split("reproduce:")[0]
    status, again = verify(capsys, *command[2:])
    assert status == 1 and again[again.index(f"case seed {seed} ("):].split("reproduce:")[0] == first_report, again


@pytest.mark.parametrize("args, message", [
    (["--space", "foo=1"], "--space: expected FIELD=VALUE with FIELD one of "),
    (["--space", "max_q_len"], "--space: expected FIELD=VALUE with FIELD one of "),
    (["--space", "max_q_len=("], "--space max_q_len: expected a Python literal, got '('"),
    (["--space", "head_dims=128"], r"--space head_dims: expected a tuple of choices, e.g. (128,), got '128'"),
    (["--space", "max_q_len=(1,)"], "--space max_q_len: expected an int, got '(1,)'"),
    (["--space", "dtypes=('float16',)"], "--space: expected a field other than dtypes (a case's dtype is --dtype's, "
                                          "which takes several: --dtype float16 bfloat16)"),
    (["--space", "min_q_len=5", "--space", "max_q_len=1"], "--space: min_q_len, max_q_len: expected min_q_len <= max_q_len"),
    (["--chunk", "4"], "--chunk, --merge, --single-pass, --fast-division: expected with --block-n (they describe its "
                       "blocking)"),
    (["--fast-division"], "--chunk, --merge, --single-pass, --fast-division: expected with --block-n"),
    (["--block-n", "0", "--function", "wrong_attention:crash"], "--block-n: expected a positive number of keys, got 0"),
    (["--block-n", "16", "--chunk", "-1", "--function", "wrong_attention:crash"],
     "--chunk: expected a positive number of keys, got -1"),
    (["--block-n", "16", "--single-pass", "--merge", "pairwise", "--function", "wrong_attention:crash"],
     "--single-pass: expected without --chunk and --merge"),
    (["--block-n", "64", "--backend", "torch"], "--block-n: expected with --function (a blocking you know), got it "
                                                "with --backend torch"),
    (["--stored"], "--stored: expected with --function (a cascade of yours), got it with --backend auto"),
    (["--stored", "--block-n", "16", "--function", "wrong_attention:crash"],
     "--stored: expected --merge pairwise or --merge running with --block-n (stored outputs are merged two at a "
     "time, Lemma 8, or by running folds, Lemma 10"),
    (["--levels", "2", "--block-n", "16", "--merge", "pairwise", "--function", "wrong_attention:crash"],
     "--levels: expected --merge running with --block-n (a tree of running folds, Lemma 10), got --levels 2 with "
     "--merge pairwise"),
    (["--levels", "0", "--block-n", "16", "--merge", "running", "--function", "wrong_attention:crash"],
     "--levels: expected a positive int, got 0"),
    (["--stored", "--block-n", "16", "--single-pass", "--function", "wrong_attention:crash"],
     "got --single-pass"),
    (["--groups", "0", "--block-n", "16", "--function", "wrong_attention:crash"],
     "--groups: expected a positive int, got 0"),
    (["--groups", "4", "--function", "wrong_attention:crash"],
     "--groups: expected with --block-n and without --single-pass (groups walk a part each, Lemma 11), got --groups 4 "
     "without --block-n"),
    (["--groups", "4", "--block-n", "16", "--single-pass", "--function", "wrong_attention:crash"],
     "got --groups 4 with --single-pass"),
    (["--chunk-from", "request", "--block-n", "16", "--function", "wrong_attention:crash"],
     "--chunk-from: expected with --chunk (only chunks are cut from a request's first key), got --chunk-from request "
     "without it"),
    (["--every-level", "--function", "wrong_attention:crash"],
     "--every-level: expected with --block-n, --merge pairwise and no --chunk, or with --stored (a cascade's pairwise "
     "merges of every level into every row, blocked_steps and stored_merges with every_level=True), got it with "
     "neither --block-n nor --stored"),
    (["--every-level", "--stored", "--block-n", "16", "--merge", "running", "--function", "wrong_attention:crash"],
     "--every-level: expected with --block-n, --merge pairwise and no --chunk, or with --stored (a cascade's pairwise "
     "merges of every level into every row, blocked_steps and stored_merges with every_level=True), got --merge "
     "running"),
    (["--every-level", "--block-n", "16", "--merge", "pairwise", "--chunk", "8", "--function", "wrong_attention:crash"],
     "--every-level: expected with --block-n, --merge pairwise and no --chunk, or with --stored (a cascade's pairwise "
     "merges of every level into every row, blocked_steps and stored_merges with every_level=True), got --chunk 8"),
    (["--every-level", "--block-n", "16", "--single-pass", "--function", "wrong_attention:crash"],
     "merges of every level into every row, blocked_steps and stored_merges with every_level=True), got --single-pass"),
])
def test_narrowing_and_blocking_options_that_cannot_run_exit_with_status_two(capsys, args, message):
    status = cli.main(["verify", "--cases", "1", *args])
    assert status == 2 and message in capsys.readouterr().err


# ---- rows without a bound, inputs written, low-precision accumulators (a user review) --------


def test_cases_without_a_bound_are_counted_apart_and_do_not_fail_the_run(capsys):
    status, out = verify(capsys, "--backend", "torch", "--cases", "6", "--space", "score_magnitudes=(1e5,)")
    assert status == 0, out
    assert "ran on: torch (6 cases)" in out  # the backend ran every case
    summary = re.search(r"no bound: (\d) cases have rows where no error bound exists for their dtype, held there to "
                        r"none and counted neither failed nor passed \(seeds ([\d, ]+)\)", out)
    assert summary, out
    unbounded = int(summary.group(1))
    assert out.rstrip().endswith(f"PASS: {6 - unbounded} of 6 cases within the bounds of relaycore.bounds, "
                                 f"{unbounded} with no bound on some rows")
    first = summary.group(2).split(", ")[0]
    assert f"case seed {first} (" in out and re.search(r"\n    unchecked: (out|lse): no \w+ error bound on ", out)


def test_a_function_that_writes_into_its_inputs_fails(capsys):
    status, out = verify(capsys, "--function", "flawed_kernels:doubles_q_in_place", "--cases", "3")
    assert status == 1, out
    assert "FAIL: q: expected unchanged by the call (attention must not write into its inputs), got " in out
    assert "FAIL: 3 of 3 cases failed" in out


def test_an_accumulator_kept_in_low_precision_fails_on_long_rows_with_its_blocking(capsys):
    long_rows = ["--dtype", "bfloat16", "--device", "cpu", "--block-n", "16", "--single-pass", "--cases", "4",
                 "--space", "max_levels=0",
                 "--space", "min_q_len=1", "--space", "max_q_len=1", "--space", "max_batch=1",
                 "--space", "max_kv_len=2000", "--space", "head_dims=(64,)"]
    status, out = verify(capsys, "--function", "flawed_kernels:accumulator_rounded", *long_rows)
    assert status == 1 and "value_offset=8.0" in out.split("reproduce:")[0], out  # caught where values are offset
    status, out = verify(capsys, "--function", "flawed_kernels:accumulator_rounded", *long_rows,
                         "--space", "value_offsets=(0.0,)")
    assert status == 0, out  # zero-mean values alone hide it
    status, out = verify(capsys, "--function", "flawed_kernels:online_softmax", *long_rows)
    assert status == 0, out


def test_a_cascade_of_stored_outputs_passes_with_stored_and_a_failure_reproduces_with_the_flag(capsys):
    """``flawed_kernels.stored_cascade`` stores each segment's output in fp16 before its merge
    (Lemma 8 of the error analysis): priced by ``--stored``, it passes. A wrong function checked
    with ``--stored`` fails, and its case reproduces with the flag."""
    status, out = verify(capsys, "--function", "flawed_kernels:stored_cascade", "--stored", "--dtype", "float16",
                         "bfloat16", "--device", "cpu", "--cases", "8")
    assert status == 0 and "bound: outputs stored in the input dtype" in out, out
    status, out = verify(capsys, "--function", "wrong_attention:ignore_prefix", "--stored", "--cases", "6", *NARROW)
    assert status == 1, out
    command = shlex.split(REPRODUCE.findall(out)[0])
    assert command[-1] == "--stored", command
    assert verify(capsys, *command[2:])[0] == 1


def test_every_failing_seed_is_listed(capsys):
    status, out = verify(capsys, "--function", "wrong_attention:crash", "--cases", "14", "--seed", "3")
    assert status == 1 and out.count("\ncase seed ") == 3  # MAX_REPORTS full reports
    assert f"FAIL: 14 of 14 cases failed (seeds {', '.join(str(s) for s in range(3, 17))})" in out


def test_dtype_takes_several_formats_and_a_case_reproduces_alone(capsys):
    status, out = verify(capsys, "--function", "wrong_attention:ignore_prefix", "--dtype", "float16", "bfloat16",
                         "--cases", "8", "--seed", "4")
    assert status == 1 and "dtype float16 bfloat16" in out, out
    cases = re.findall(r"case seed (\d+) \((\w+)\)", out)
    assert cases and all(dtype == ("float16", "bfloat16")[int(seed) % 2] for seed, dtype in cases), cases
    command = shlex.split(REPRODUCE.findall(out)[0])
    seed = command[command.index("--seed") + 1]
    first_report = out[out.index(f"case seed {seed} ("):].split("reproduce:")[0]
    status, again = verify(capsys, *command[2:])
    assert status == 1 and again[again.index(f"case seed {seed} ("):].split("reproduce:")[0] == first_report
    status, repeated = verify(capsys, "--function", "wrong_attention:ignore_prefix", "--dtype", "float16", "--dtype",
                              "bfloat16", "--cases", "8", "--seed", "4")
    assert repeated == out


def test_run_is_verify_from_python(capsys):
    from relaycore.verify import UsageError, run

    outcome = run(relaycore.relay_attention, cases=6, seed=2, dtypes=("float16", "bfloat16"), device="cpu",
                  space={"max_q_len": 2})
    out = capsys.readouterr().out
    assert outcome.passed and outcome.failed == () and outcome.ran_on == {"relay_attention": 6}, out
    assert out.startswith("relaycore verify: function relay_attention, 6 cases (seeds 2..7), dtype float16 bfloat16")
    assert 0 < outcome.worst_out[0] <= 1 and outcome.worst_out[1].startswith("seed ")
    outcome = run("wrong_attention:ignore_prefix", cases=4, dtypes=("float32",), device="cpu")
    assert not outcome.passed and "reproduce: relaycore verify --function wrong_attention:ignore_prefix" in \
        capsys.readouterr().out
    with pytest.raises(UsageError, match=r"^seed: expected an int >= 0"):
        run(seed=-1)
    with pytest.raises(ValueError, match=r"^space: expected fields among .* \(a case's dtype is set by dtypes\), got "
                                         r"'dtypes'$"):
        run(space={"dtypes": ("float16",)})
    with pytest.raises(UsageError, match=r"^backend: expected one of auto, reference, torch, triton, got 'gpu'$"):
        run(backend="gpu")


def test_the_guide_shows_what_verify_prints(capsys):
    """The sample runs of docs/guide/testing.md, numbers aside (they follow the platform's
    rounding): the lines a passing run ends with, and the failing seeds of one that forgets the
    prefixes (mykernel:ignores_prefix there, wrong_attention:ignore_prefix here)."""
    from pathlib import Path

    guide = (Path(__file__).resolve().parents[1] / "docs" / "guide" / "testing.md").read_text()
    blocks = re.findall(r"```text\n(.*?)```", guide, re.S)
    number = re.compile(r"\d+(\.\d+)?(e[+-]\d+)?( \(seed \d+, \w+\))?")
    status, out = verify(capsys, "--backend", "torch", "--device", "cpu", "--cases", "20")
    passing = next(b for b in blocks if b.startswith("  ran on: torch (20 cases)"))
    assert status == 0 and number.sub("N", out).endswith(number.sub("N", passing)), out
    status, out = verify(capsys, "--function", "wrong_attention:ignore_prefix", "--device", "cpu", "--cases", "20")
    failing = next(b for b in blocks if b.startswith("case seed "))
    assert status == 1 and out.rstrip().endswith(failing.rstrip().splitlines()[-1]), out
    assert failing.splitlines()[0] in out


def test_a_run_whose_every_case_has_rows_without_a_bound_does_not_pass(capsys):
    # scores of standard deviation 1e7: no row of any dtype has a bound; the seeds include a
    # multi-row case past out_bound's rho limit, which once raised a plain ValueError in check
    status, out = verify(capsys, "--backend", "torch", "--device", "cpu", "--cases", "6", "--space",
                         "score_magnitudes=(1e7,)")
    assert status == 1, out
    assert "ran on: torch (6 cases)" in out and "raised" not in out, out
    assert out.rstrip().endswith("FAIL: every one of the 6 cases has rows without a bound, held there to none: "
                                 "narrow --space (smaller score magnitudes, shorter rows)")


def test_an_error_of_the_check_itself_is_not_blamed_on_the_implementation(capsys, monkeypatch):
    import importlib

    check_module = importlib.import_module("relaycore.testing.check")  # the package's ``check`` is the function

    def broken(*args, **kwargs):
        raise ValueError("a bug in the check")

    monkeypatch.setattr(check_module, "_bounds", broken)
    with pytest.raises(ValueError, match="a bug in the check"):
        cli.main(["verify", "--backend", "torch", "--device", "cpu", "--cases", "1"])


# ---- a downstream trial: refused results, cases without rows, truth values -------------------


def returns_a_masked_array(q, cu_seqlens_q, kv, prefixes, *, causal=True, softmax_scale=None):
    """The reference's result, ``out`` wrapped in a NumPy masked array."""
    out, lse = relaycore.relay_attention(q, cu_seqlens_q, kv, prefixes, causal=causal, softmax_scale=softmax_scale)
    return np.ma.masked_array(out), lse


def returns_meta_tensors(q, cu_seqlens_q, kv, prefixes, *, causal=True, softmax_scale=None):
    """The torch backend's result, moved to the meta device (no values)."""
    out, lse = relaycore.relay_attention(q, cu_seqlens_q, kv, prefixes, causal=causal, softmax_scale=softmax_scale,
                                         backend="torch")
    return out.to("meta"), lse.to("meta")


def returns_a_dict(q, cu_seqlens_q, kv, prefixes, *, causal=True, softmax_scale=None):
    out, lse = relaycore.relay_attention(q, cu_seqlens_q, kv, prefixes, causal=causal, softmax_scale=softmax_scale)
    return {"out": out, "lse": lse}


@pytest.mark.parametrize("function, options, refusal", [
    ("returns_a_masked_array", ["--dtype", "float64"],
     "TypeError): out: expected a plain NumPy array, got a masked array"),
    ("returns_meta_tensors", ["--device", "cpu"],
     "ValueError): out: expected a tensor that holds values, got a tensor on the meta device"),
    ("returns_a_dict", ["--dtype", "float64"], "TypeError): result: expected a pair (out, lse) of arrays or tensors, "
                                               "got dict"),
])
def test_a_result_the_check_refuses_is_a_failing_case(capsys, function, options, refusal):
    status, out = verify(capsys, "--function", f"test_verify:{function}", "--cases", "3", *options)
    assert status == 1, out
    assert f"FAIL: the check refuses the result ({refusal}" in out
    assert "FAIL: 3 of 3 cases failed (seeds 0, 1, 2)" in out and "reproduce: relaycore verify" in out


def test_cases_without_query_rows_are_counted_apart(capsys):
    # seed 14 of the CPU space draws only requests of q_len 0: nothing to hold to a bound
    status, out = verify(capsys, "--backend", "torch", "--device", "cpu", "--cases", "2", "--seed", "13")
    assert status == 0, out
    assert ("  no rows: 1 case has no query row (every q_len is 0), nothing to hold to a bound: counted neither "
            "failed nor passed (seeds 14)") in out
    assert out.rstrip().endswith("PASS: 1 of 2 cases within the bounds of relaycore.bounds, 1 with no query row to "
                                 "check")
    assert "seed 14" not in out.split("worst out error:")[1].split("\n")[0]  # no worst error of an empty case
    # a run that checked no row at all checked too little to pass
    status, out = verify(capsys, "--backend", "torch", "--device", "cpu", "--cases", "1", "--seed", "14")
    assert status == 1, out
    assert out.rstrip().endswith("FAIL: none of the 1 cases was checked on every row: 1 had no query row; widen "
                                 "--space (min_q_len=1 gives every request a query)")
    # an empty case still fails when its function raises
    status, out = verify(capsys, "--function", "wrong_attention:crash", "--cases", "1", "--seed", "14")
    assert status == 1 and "FAIL: 1 of 1 cases failed (seeds 14)" in out, out


def test_an_outcome_has_no_truth_value(capsys):
    from relaycore.verify import run

    outcome = run("wrong_attention:ignore_prefix", cases=2, dtypes=("float32",), device="cpu")
    capsys.readouterr()
    assert not outcome.passed and outcome.failed
    with pytest.raises(TypeError, match=r"an Outcome has no truth value .*: use outcome\.passed"):
        assert outcome  # noqa: PT017 (the pattern refused)


def test_the_default_spaces_cannot_see_a_low_precision_accumulator_and_the_guide_says_so(capsys):
    """A bf16 output accumulator passes the default batches, short rows; the guide says so and
    gives the recipe that catches it (run on long rows by the test above)."""
    status, out = verify(capsys, "--function", "flawed_kernels:accumulator_rounded", "--dtype", "bfloat16",
                         "--device", "cpu", "--cases", "30", "--block-n", "16", "--single-pass")
    assert status == 0, out
    from pathlib import Path

    guide = (Path(__file__).resolve().parents[1] / "docs" / "guide" / "testing.md").read_text()
    assert "cannot see the precision of an accumulator" in guide
    assert re.search(r"relaycore verify --function \S+ --dtype bfloat16 --space max_kv_len=2000 \\\n\s+--space "
                     r"\"value_offsets=\(8\.0,\)\" --block-n 16", guide)


# ---- a downstream trial: narrower prefixes, host metadata, messages and lines for Python callers


def no_unread_level_nor_empty_prefix(q, cu_seqlens_q, kv, prefixes, *, causal=True, softmax_scale=None):
    """A kernel that refuses levels no request reads and prefixes of length 0 (what ``--space``
    leaves out below)."""
    for i, level in enumerate(prefixes):
        if not bool((level.prefix_ids >= 0).any()) or bool((level.cu_seqlens.diff() == 0).any()):
            raise NotImplementedError(f"level {i}: unread, or with a prefix of length 0")
    return relaycore.relay_attention(q, cu_seqlens_q, kv, prefixes, causal=causal, softmax_scale=softmax_scale,
                                     backend="torch")


def test_space_leaves_out_unread_levels_and_empty_prefixes(capsys):
    function = ["--function", "test_verify:no_unread_level_nor_empty_prefix", "--cases", "30", "--device", "cpu"]
    status, out = verify(capsys, *function)
    assert status == 1 and "raised NotImplementedError: level " in out, out  # the default batches: refused
    status, out = verify(capsys, *function, "--space", "min_prefix_len=1", "--space", "unread_levels=False")
    assert status == 0, out
    assert "prefixes of length 1..24 at most, every level read" in out
    status, out = verify(capsys, *function, "--space", "min_prefix_len=1")
    assert status == 1, out  # unread levels still drawn
    status = cli.main(["verify", "--cases", "1", "--space", "unread_levels=0"])
    assert status == 2 and "--space unread_levels: expected True or False, got '0'" in capsys.readouterr().err
    from relaycore.verify import run

    outcome = run(no_unread_level_nor_empty_prefix, cases=30, device="cpu",
                  space={"min_prefix_len": 1, "unread_levels": False})
    assert outcome.passed, capsys.readouterr().out


def metadata_on_the_host(q, cu_seqlens_q, kv, prefixes, *, causal=True, softmax_scale=None):
    """A kernel that takes its metadata as NumPy arrays beside its tensors, and refuses tensors there."""
    metadata = [cu_seqlens_q, *kv[2:], *(x for level in prefixes for x in level[2:])]
    if not all(isinstance(x, np.ndarray) for x in metadata):
        raise TypeError(f"metadata: expected NumPy arrays, got {sorted({type(x).__name__ for x in metadata})}")
    return relaycore.relay_attention(q, cu_seqlens_q, kv, prefixes, causal=causal, softmax_scale=softmax_scale,
                                     backend="torch")


def ignores_prefix_on_the_host(q, cu_seqlens_q, kv, prefixes, *, causal=True, softmax_scale=None):
    return metadata_on_the_host(q, cu_seqlens_q, kv, (), causal=causal, softmax_scale=softmax_scale)


def test_host_metadata_hands_a_kernel_its_metadata_as_numpy_arrays(capsys):
    function = ["--function", "test_verify:metadata_on_the_host", "--cases", "6", "--device", "cpu"]
    status, out = verify(capsys, *function)
    assert status == 1 and "raised TypeError: metadata: expected NumPy arrays, got ['Tensor']" in out, out
    status, out = verify(capsys, *function, "--host-metadata")
    assert status == 0 and "device cpu, metadata on the host (NumPy arrays)" in out, out
    for backend in ("torch", "reference"):  # relaycore's own backends take it too
        status, out = verify(capsys, "--backend", backend, "--cases", "6", "--device", "cpu", "--host-metadata")
        assert status == 0, out
    # a failing case reproduces with its metadata on the host
    status, out = verify(capsys, "--function", "test_verify:ignores_prefix_on_the_host", "--cases", "6", "--device",
                         "cpu", "--host-metadata")
    command = shlex.split(REPRODUCE.findall(out)[0])
    assert status == 1 and "--host-metadata" in command, out
    seed = command[command.index("--seed") + 1]
    status, again = verify(capsys, *command[2:])
    assert status == 1 and "FAIL: 1 of 1 cases failed" in again
    assert again[again.index(f"case seed {seed} ("):].split("reproduce:")[0] == \
        out[out.index(f"case seed {seed} ("):].split("reproduce:")[0]
    status = cli.main(["verify", "--dtype", "float64", "--host-metadata"])
    assert status == 2 and ("--host-metadata: expected with torch inputs, got it with --dtype float64, whose NumPy "
                            "arrays hold the metadata on the host already") in capsys.readouterr().err
    from relaycore.verify import run

    assert run(metadata_on_the_host, cases=6, device="cpu", host_metadata=True).passed, capsys.readouterr().out


@pytest.mark.parametrize("options, message", [
    (dict(cases=0), "cases: expected at least 1, got 0"),
    (dict(cases=1.5), "cases: expected an int, got 1.5"),
    (dict(single_pass="yes", block_n=4, function="wrong_attention:crash"), "single_pass: expected a bool, got 'yes'"),
    (dict(stored=1, function="wrong_attention:crash"), "stored: expected a bool, got 1"),
    (dict(dtypes=("float8",)), "dtypes: expected one or more of ['float16', 'bfloat16', 'float32', 'float64'], got "
                               "['float8']"),
    (dict(dtypes=("float64", "float16")), "dtypes: expected float64 alone (it passes NumPy arrays, the others torch "
                                          "tensors), got dtypes=('float64', 'float16')"),
    (dict(dtypes=("float64",), device="cuda"), "dtypes=('float64',) passes NumPy arrays, which live on the CPU; drop "
                                               "device='cuda'"),
    (dict(dtypes=("float64",), backend="torch"), "dtypes=('float64',) passes NumPy arrays, which only the reference "
                                                 "backend takes, not 'torch'"),
    (dict(dtypes=("float64",), host_metadata=True), "host_metadata: expected with torch inputs, got it with "
                                                    "dtypes=('float64',)"),
    (dict(chunk=4), "chunk, merge, single_pass, fast_division: expected with block_n (they describe its blocking)"),
    (dict(fast_division="yes", block_n=4, function="wrong_attention:crash"), "fast_division: expected a bool, got 'yes'"),
    (dict(block_n=64, backend="torch"), "block_n: expected with function (a blocking you know), got it with "
                                        "backend='torch'"),
    (dict(block_n=0, function="wrong_attention:crash"), "block_n: expected a positive number of keys, got 0"),
    (dict(block_n=8, single_pass=True, merge="pairwise", function="wrong_attention:crash"),
     "single_pass: expected without chunk and merge"),
    (dict(merge="tree"), "merge: expected one of ['fold', 'pairwise', 'running'], got 'tree'"),
    (dict(block_n=16, chunk=8, chunk_from="row", function="wrong_attention:crash"),
     "chunk_from: expected one of ['segment', 'request'], got 'row'"),
    (dict(block_n=16, chunk_from="request", function="wrong_attention:crash"),
     "chunk_from: expected with chunk (only chunks are cut from a request's first key), got chunk_from='request' "
     "without it"),
    (dict(every_level="yes", stored=True, function="wrong_attention:crash"), "every_level: expected a bool, got 'yes'"),
    (dict(every_level=True, block_n=16, merge="running", function="wrong_attention:crash"),
     "every_level: expected with block_n, merge='pairwise' and no chunk, or with stored (a cascade's pairwise merges "
     "of every level into every row, blocked_steps and stored_merges with every_level=True), got merge='running'"),
    # arguments of the wrong kind: each named, none a KeyError or a bare TypeError from inside
    (dict(device="gpu"), "device: expected one of ['cpu', 'cuda'], got 'gpu'"),
    (dict(device="cuda:0"), "device: expected one of ['cpu', 'cuda'], got 'cuda:0'"),
    (dict(dtypes="float16"), "dtypes: expected a tuple of format names, e.g. ('float16',), got 'float16'"),
    (dict(dtypes=16), "dtypes: expected a tuple of format names, e.g. ('float16',), got 16"),
    (dict(space="max_q_len=1"), "space: expected a dict of relaycore.testing.BatchSpace fields, e.g. "
                                "{'max_q_len': 1}, got str"),
    (dict(function=42), "function: expected a callable with relay_attention's signature or its 'module:function', "
                        "got int"),
    (dict(block_n="16", function="wrong_attention:crash"), "block_n: expected a positive int (a number of keys), "
                                                           "got '16'"),
    (dict(block_n=16, chunk=32.0, function="wrong_attention:crash"), "chunk: expected a positive int (a number of "
                                                                     "keys), got 32.0"),
    (dict(function="missing-colon"), "function: expected MODULE:FUNCTION, got 'missing-colon'"),
    (dict(function="no_such_module:fn"), "function: cannot load 'no_such_module:fn'"),
    (dict(space={"min_q_len": 5, "max_q_len": 1}), "space: min_q_len, max_q_len: expected min_q_len <= max_q_len"),
    (dict(dtypes=("float64",), space={"score_magnitudes": (1e308,)}),
     "case seed 0 (float64): the oracle refuses the drawn batch (q: expected scores"),
    (dict(dtypes=("float16",), device="cpu", space={"score_magnitudes": (1e30,)}),
     "case seed 0 (float16): make_batch refuses the drawn batch (score_magnitude: expected"),
])
def test_run_s_refusals_name_its_keywords_not_the_command_s_flags(capsys, options, message):
    from relaycore.verify import UsageError, run

    with pytest.raises(UsageError) as refused:
        run(**{"cases": 1, **options})
    text = str(refused.value)
    assert text.startswith(message) or message in text, text
    assert "--" not in text.split("\n")[0], text
    if "refuses the drawn batch" in text:
        assert text.split("\n")[0].endswith("; narrow space"), text


def test_run_without_torch_names_the_dtypes_keyword(monkeypatch):
    from relaycore.verify import UsageError, run

    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(UsageError, match=r"^torch is not installed: use dtypes=\('float64',\) \(NumPy inputs\) or "
                                         r"install torch$"):
        run(cases=1, device="cpu")
    assert cli.main(["verify", "--cases", "1", "--device", "cpu"]) == 2


def _closure():
    """A kernel as a closure: no module:qualname imports it."""
    def fn(q, cu_seqlens_q, kv, prefixes, *, causal=True, softmax_scale=None):
        return relaycore.relay_attention(q, cu_seqlens_q, kv, (), causal=causal, softmax_scale=softmax_scale,
                                         backend="torch")

    return fn


class Kernels:
    """Kernels under a class: ``test_verify:Kernels.ignore_prefix`` names one."""

    @staticmethod
    def ignore_prefix(q, cu_seqlens_q, kv, prefixes, *, causal=True, softmax_scale=None):
        return relaycore.relay_attention(q, cu_seqlens_q, kv, (), causal=causal, softmax_scale=softmax_scale,
                                         backend="torch")


@pytest.mark.parametrize("make", [_closure, lambda: lambda *args, **kwargs: _closure()(*args, **kwargs)],
                         ids=["closure", "lambda"])
def test_a_function_that_cannot_be_named_reproduces_as_the_run_call_to_pass_it_to(capsys, make):
    from relaycore.verify import run

    fn = make()
    options = dict(dtypes=("float32",), device="cpu", space={"max_q_len": 2}, block_n=16, merge="pairwise")
    outcome = run(fn, cases=6, seed=3, **options)
    out = capsys.readouterr().out
    seed = outcome.failed[0]
    call = (f"relaycore.verify.run(fn, seed={seed}, cases=1, dtypes=('float32',), device='cpu', "
            f"space={{'max_q_len': 2}}, block_n=16, merge='pairwise')")
    assert (f"  reproduce: {call}\n      with fn the function checked, {fn.__qualname__}, which cannot be named from "
            f"outside (no module:qualname imports it") in out, out
    again = eval(call, {"relaycore": relaycore, "fn": fn})  # the line runs, with the function passed
    assert again.failed == (seed,)
    first_report = out[out.index(f"case seed {seed} ("):].split("reproduce:")[0]
    rerun = capsys.readouterr().out
    assert rerun[rerun.index(f"case seed {seed} ("):].split("reproduce:")[0] == first_report


@pytest.mark.parametrize("name", ["wrong_attention:ignore_prefix", "test_verify:Kernels.ignore_prefix"])
def test_a_function_with_an_importable_name_reproduces_as_the_command(capsys, name):
    from relaycore.verify import _load_function, run

    fn = _load_function(name, "function")
    outcome = run(fn, cases=4, dtypes=("float32",), device="cpu", space={"max_q_len": 2})
    out = capsys.readouterr().out
    seed = outcome.failed[0]
    line = (f"reproduce: relaycore verify --function {name} --seed {seed} --cases 1 --dtype float32 --device cpu "
            f"--space max_q_len=2")
    assert line in out, out
    status, again = verify(capsys, *shlex.split(line.split(": ", 1)[1])[2:])
    assert status == 1 and again[again.index(f"case seed {seed} ("):].split("reproduce:")[0] == \
        out[out.index(f"case seed {seed} ("):].split("reproduce:")[0]


def test_a_failing_case_names_the_fewest_of_its_requests_that_fail(capsys):
    """Where fewer requests of a failing case fail too, the report prints the call that builds
    them alone (``fewest_requests``): it rebuilds a batch that fails, of no request it can lose."""
    import wrong_attention
    from relaycore.testing import compare, make_batch

    status, out = verify(capsys, "--function", "wrong_attention:ignore_prefix", "--device", "cpu", "--cases", "3")
    calls = re.findall(r"^  fewest requests that fail \((\d+)\): relaycore\.testing\.(make_batch\(.*\)\.requests\(\[.*\]\))$",
                       out, re.M)
    assert status == 1 and calls, out
    for count, call in calls:
        fewest = eval(call, {"make_batch": make_batch})
        fails = lambda b: not compare(wrong_attention.ignore_prefix, b, device="cpu").passed  # noqa: E731
        assert fewest.batch_size == int(count) and fails(fewest)
        assert all(not fails(fewest.requests([j for j in range(fewest.batch_size) if j != i]))
                   for i in range(fewest.batch_size))


def test_levels_above_one_price_the_tree_through_lemma_10_with_or_without_stored():
    """A tree of running folds is Lemma 10's even where its intermediate outputs stay fp32 (Lemma 9
    covers one fold): ``--levels 2`` passes ``stored_merges(merge="running", levels=2)`` and
    ``stored_merge="running"`` with or without ``--stored``; ``--levels 1`` without it, nothing."""
    from types import SimpleNamespace

    from relaycore import verify as verify_module
    from relaycore.testing import make_batch

    batch = make_batch([1], [40], prefix_lens=[[200]], prefix_ids=[[0]], head_dim=16, dtype="float16", seed=2)
    for stored in (False, True):
        options = SimpleNamespace(stored=stored, block_n=16, merge="running", levels=2)
        priced = verify_module._stored(options, batch)
        assert priced["stored_merge"] == "running" and priced["stored"][:, 0].tolist() == [2], priced
    assert verify_module._stored(SimpleNamespace(stored=False, block_n=16, merge="running", levels=1), batch) == {}


def test_fast_division_with_pairwise_stored_merges_prices_a_fast_math_cascade():
    """``--merge pairwise --fast-division --stored`` (FlashInfer's cascade wrapper under
    ``-use_fast_math``, Lemma 8 with divisions within 2 ulp): ``blocked_steps(merge="pairwise",
    fast_division=True)`` and the stored merges priced as Lemma 10's (``stored_merge="running"``);
    without ``--fast-division``, Lemma 8's own pricing."""
    from types import SimpleNamespace

    from relaycore import verify as verify_module
    from relaycore.testing import blocked_steps, make_batch, stored_merges

    batch = make_batch([1], [40], prefix_lens=[[200]], prefix_ids=[[0]], head_dim=16, dtype="float16", seed=2)
    options = SimpleNamespace(block_n=16, single_pass=False, chunk=None, chunk_from="segment", merge="pairwise",
                              fast_division=True, levels=1, groups=1, stored=True, every_level=False)
    assert np.array_equal(verify_module._steps(options, batch),
                          blocked_steps(batch, 16, merge="pairwise", fast_division=True))
    assert np.array_equal(verify_module._steps(options, batch) - 1, blocked_steps(batch, 16, merge="pairwise"))
    priced = verify_module._stored(options, batch)
    assert priced["stored_merge"] == "running" and np.array_equal(priced["stored"], stored_merges(batch))
    assert "stored_merge" not in verify_module._stored(SimpleNamespace(**{**vars(options), "fast_division": False}),
                                                      batch)


def test_groups_and_chunk_from_count_flashinfer_decode_chunks_as_blocked_steps_does():
    """``--groups Z`` (Lemma 11) and ``--chunk-from request`` (Lemma 12): the steps
    ``blocked_steps(..., chunk_from=..., groups=Z)`` counts, FlashInfer's split-KV decode with its
    chunks stored and merged by the two-level kernel priced with them."""
    from types import SimpleNamespace

    from relaycore import verify as verify_module
    from relaycore.testing import blocked_steps, make_batch

    # chunks of 64: the prefix's 64, 64, 64, 8 and the own 40; a chunk of 64 in 4 groups of 4-slot blocks takes
    # 4 iterations and 4 groups; 5 parts folded twice; a 2-ulp division per fold
    batch = make_batch([1], [40], prefix_lens=[[200]], prefix_ids=[[0]], head_dim=16, dtype="float16", seed=2)
    options = SimpleNamespace(block_n=4, single_pass=False, chunk=64, chunk_from="segment", merge="running",
                              fast_division=True, levels=2, groups=4, stored=True, every_level=False)
    steps = verify_module._steps(options, batch)
    assert steps[:, 0].tolist() == blocked_steps(batch, 4, chunk=64, merge="running", levels=2, fast_division=True,
                                                 groups=4)[:, 0].tolist() == [(4 + 4 - 1) + (5 - 1 + 2) + 2]
    assert verify_module._stored(options, batch)["stored"][:, 0].tolist() == [2]
    # --chunk-from request (Lemma 12), FlashInfer's chunks of the 240 keys: 64, 64, 64, 48, four parts
    steps = verify_module._steps(SimpleNamespace(**{**vars(options), "chunk_from": "request"}), batch)
    assert steps[:, 0].tolist() == [(4 + 4 - 1) + (4 - 1 + 2) + 2]


def test_every_level_counts_a_cascade_that_merges_every_level_into_every_row(capsys):
    """``--every-level`` (FlashInfer's cascade wrapper merges every prefix level into every row):
    the steps of ``blocked_steps(..., every_level=True)``, two more for a level a request does not
    read under ``--fast-division``, and ``stored_merges(batch, every_level=True)``, one per level
    for every row, with ``--block-n`` or with ``--stored`` alone. A failing case says so and
    reproduces with the flag."""
    from types import SimpleNamespace

    from relaycore import verify as verify_module
    from relaycore.testing import blocked_steps, make_batch, stored_merges

    # request 0 reads both levels, request 1 the first only
    batch = make_batch([1, 1], [40, 40], prefix_lens=[[200], [64]], prefix_ids=[[0, 0], [0, -1]], head_dim=16,
                       dtype="float16", seed=2)
    options = SimpleNamespace(block_n=16, single_pass=False, chunk=None, chunk_from="segment", merge="pairwise",
                              fast_division=True, levels=1, groups=1, stored=True, every_level=True)
    steps = verify_module._steps(options, batch)
    assert np.array_equal(steps, blocked_steps(batch, 16, merge="pairwise", fast_division=True, every_level=True))
    assert (steps - verify_module._steps(SimpleNamespace(**{**vars(options), "every_level": False}), batch))[
        :, 0].tolist() == [0, 2]
    priced = verify_module._stored(options, batch)
    assert priced["stored_merge"] == "running" and priced["stored"][:, 0].tolist() == [2, 2]
    assert verify_module._stored(SimpleNamespace(**{**vars(options), "every_level": False}), batch)["stored"][
        :, 0].tolist() == [2, 1]
    alone = SimpleNamespace(**{**vars(options), "block_n": None, "merge": "fold", "fast_division": False})
    assert np.array_equal(verify_module._stored(alone, batch)["stored"], stored_merges(batch, every_level=True))

    flags = ["--block-n", "16", "--merge", "pairwise", "--fast-division", "--stored", "--every-level"]
    status, out = verify(capsys, "--function", "wrong_attention:ignore_prefix", "--cases", "6", *flags, *NARROW)
    assert status == 1, out
    assert ("bound: the steps of blocks of 16 keys, a part per segment, merged pairwise, divisions within 2 ulp, every "
            "prefix level merged into every row") in out
    assert "bound: outputs stored in the input dtype, one pairwise merge of them per prefix level for every row" in out
    command = shlex.split(REPRODUCE.findall(out)[0])
    assert command[command.index("--block-n"):] == flags, command
    assert verify(capsys, *command[2:])[0] == 1
