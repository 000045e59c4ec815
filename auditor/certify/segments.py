"""Spot-check arithmetic: which segments to replay, from what seed, and what the check
could catch. Pure functions over numbers and strings, so anyone can replay a choice.

Contract:

- A run with checkpoints at steps ``s_0 < s_1 < … < s_n`` has ``n`` segments; segment
  ``k`` (0-based) replays from the checkpoint at ``s_k`` to the one at ``s_{k+1}``.
- ``choose_segments(seed, n, q)`` ranks every segment by ``sha256("<seed>:<k>")`` (hex
  digest, as text) and takes the ``q`` lowest, returned in segment order. It depends on
  the seed text and ``n`` only: the certificate records both, so any reader re-derives the
  same choice (``audit verify RUN --segments Q --segment-seed SEED``).
- ``derive_seed(log_head, run_id, nonce)`` is the verifier's seed when none is given:
  ``sha256("auditor-segments-v1\\n<log head line sha256>\\n<run id>\\n<nonce hex>")``. The
  log head binds the choice to the store's certificate log at verify time and the 16
  fresh random bytes make it unknowable to the run's author in advance (a record cannot
  be ground until its forged segments go unpicked). The head and the seed are recorded.
- ``catch_chance(n, q, k)``: the hypergeometric chance that ``q`` segments drawn without
  replacement from ``n`` include at least one of ``k`` bad ones,
  ``1 - C(n-k, q) / C(n, q)``.
"""

from __future__ import annotations

import hashlib
import math
import secrets

SEED_DOMAIN = "auditor-segments-v1"


def choose_segments(seed: str, n: int, q: int) -> list[int]:
    """The ``q`` segments (0-based, in order) the seed picks among ``n``."""
    if n < 1:
        raise ValueError("a run needs at least two checkpoints (one segment) to spot-check")
    if not 1 <= q <= n:
        raise ValueError(f"cannot choose {q} of {n} segment(s)")
    ranked = sorted(range(n), key=lambda k: hashlib.sha256(f"{seed}:{k}".encode()).hexdigest())
    return sorted(ranked[:q])


def derive_seed(log_head: str, run_id: str, nonce: bytes | None = None) -> str:
    """The verifier's segment seed (64 hex digits) from the certificate-log head."""
    fresh = nonce if nonce is not None else secrets.token_bytes(16)
    text = f"{SEED_DOMAIN}\n{log_head}\n{run_id}\n{fresh.hex()}"
    return hashlib.sha256(text.encode()).hexdigest()


def catch_chance(n: int, q: int, k: int) -> float:
    """Chance that ``q`` of ``n`` segments drawn without replacement hit one of ``k`` bad."""
    if not (0 <= k <= n and 0 <= q <= n):
        raise ValueError(f"need 0 <= k, q <= n (n={n}, q={q}, k={k})")
    if k == 0:
        return 0.0
    return 1.0 - math.comb(n - k, q) / math.comb(n, q)


def tenth(n: int) -> int:
    """k = 10% of n bad segments, at least one."""
    return max(1, round(n / 10))
