"""``relaycore.proofs``: every claim relaycore rests on, as a literate module.

Each module's docstring states a claim and proves it (prose and LaTeX, rendered on the docs
site); its ``check_*`` functions are the machine check (sympy where the claim is an identity,
60-digit mpmath over Hypothesis-drawn inputs where it is numeric), run by
``tests/test_proofs.py``, each raising ``AssertionError`` on failure.

* ``merge_monoid`` — the merge of attention states is a commutative monoid with identity
  ``(0, -inf)``; the max-subtracted form of ``relaycore.state.merge`` computes it, never NaN.
* ``relay_identity`` — attention over a concatenation is the merge of the parts' states.
* ``causal_split`` — causal masking splits into "all prefix" and an offset mask on own tokens;
  the order of levels is irrelevant.
* ``levels`` — cutting levels anywhere and moving tokens between prefix and request change
  nothing.
* ``error_bound`` — the floating-point bound of ``relaycore.bounds``, checked on a kernel
  simulated with every fp16/bf16/fp32 rounding explicit.

``exact`` (60-digit attention states), ``rounding`` (explicit IEEE rounding) and ``draws``
(Hypothesis strategies) are the tools the checks share.
"""
