"""relaycore: RelayAttention, exact.

Attention over ``[shared prefix ; request]`` splits exactly into an attention over the prefix and
one over the request's own tokens, merged through their log-sum-exps. relaycore gives a NumPy
float64 oracle (``relaycore.reference``), a testing kit for other projects' CI
(``relaycore.testing``), a portable PyTorch backend and Triton kernels (``relaycore.fast``).

Importing relaycore needs NumPy alone; torch and triton load when a backend needs them.
"""

from relaycore.api import merge_states, relay_attention, select_backend
from relaycore.types import AttentionState, PagedKV, PrefixLevel, RaggedKV

__all__ = [
    "AttentionState",
    "PagedKV",
    "PrefixLevel",
    "RaggedKV",
    "merge_states",
    "relay_attention",
    "select_backend",
]
__version__ = "0.1.0"
