"""Numbers with one meaning each, shared by every backend.

Log-sum-exps cross every public boundary in natural log. A kernel that works in base 2
(``exp2``/``log2`` are the fast instructions on GPUs) converts with these two constants at its
edges and nowhere else.
"""

import math

#: log2(e): multiply a natural-log quantity by this to get base 2.
LOG2E = 1.0 / math.log(2.0)
#: ln(2): multiply a base-2 log by this to get natural log.
LN2 = math.log(2.0)

#: The floating-point formats relaycore computes in, by canonical name.
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
