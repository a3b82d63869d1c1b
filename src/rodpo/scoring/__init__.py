"""The scoring core: sequence states (N, D) against the item table (n_items + 1, D), streamed in chunks.

s(x, i) = states[x] . table[i] (Eq. 3, with `RoDPOModel.scoring_table()`); row 0 of the table is
padding and never a candidate. Training (CE, negatives), evaluation (target ranks) and
recommendation (top-N) all score through here, so no caller builds an (N, n_items) tensor: the
catalog is visited `chunk_items` items at a time and peak extra memory is O(N * chunk_items).

Scores are matmuls in the autocast dtype when autocast is on (else the inputs' promoted dtype),
reduced in fp32 (fp64 for fp64 inputs). Every matmul is a multiple of SCORE_ALIGN items wide (a
short last chunk is filled with zero rows): BLAS kernels treat narrow or ragged widths
differently, and an item's score must not depend on where it falls. Deterministic tie rule
everywhere: equal scores -> lower item id first; NaN ranks above +inf (as in torch.topk); an item
scored -inf is never returned.

chunks.py (chunking, checks), cross_entropy.py (L_CE, optionally with the top-K pool from the same
pass), top_k.py (top-K, the pool draw), ranks.py (target ranks, optionally with a top-K pool from the same pass).
"""

from rodpo.scoring.chunks import (
    AUTO_CHUNK_BYTES,
    AUTO_CUDA_FREE_FRACTION,
    LOGIT_BYTES,
    SCORE_ALIGN,
    resolve_chunk_items,
)
from rodpo.scoring.cross_entropy import (
    BACKENDS,
    REDUCTIONS,
    chunked_cross_entropy,
    cross_entropy_and_top_k,
    cross_entropy_backend,
)
from rodpo.scoring.ranks import ranks_and_top_k, target_ranks, target_ranks_unmasked_and_masked
from rodpo.scoring.top_k import draw_from_pool, top_k_items

__all__ = [
    "AUTO_CHUNK_BYTES", "AUTO_CUDA_FREE_FRACTION", "BACKENDS", "LOGIT_BYTES", "REDUCTIONS", "SCORE_ALIGN",
    "chunked_cross_entropy", "cross_entropy_and_top_k", "cross_entropy_backend", "draw_from_pool",
    "ranks_and_top_k", "resolve_chunk_items", "target_ranks", "target_ranks_unmasked_and_masked", "top_k_items",
]
