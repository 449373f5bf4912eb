"""``relaycore bench``: relaycore against its peers and the physical floor, on the same inputs.

Modules, in the order a run uses them:

- ``grids``: benchmark points and the decode/append grids of the fast-path issue.
- ``problem``: the one setup factory, the float64 oracle and the correctness gate.
- ``providers``: the registry of providers (relaycore's backends, SDPA, FlexAttention,
  FlashInfer paged and cascade); a missing library is reported, never dropped.
- ``timing``: CUDA-event timing of CUDA-graph replays with a cold L2; the card's ceilings.
- ``floor``: bytes and FLOPs a point must cost; the paper's analytical model.
- ``runner``: check, then time, every provider at every point.
- ``results``: the JSON schema, the environment it records, its checker.
- ``analysis``: ratios, the issue-3 targets, the terminal table.
- ``report``: plots and the docs page ``docs/benchmarks/index.md``.
- ``cli``: the ``relaycore bench`` subcommand.
"""
