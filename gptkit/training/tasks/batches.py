"""What every task shares: batches drawn from a generator seeded by (seed, step), so a resumed run needs no data
cursor."""

from __future__ import annotations


import torch



def batch_generator(seed: int, step: int, micro_step: int = 0) -> torch.Generator:
    """A generator whose state depends only on (seed, step, micro_step): batches need no saved data cursor."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 1_009 + micro_step) % (2**63))


def sample_rows(n_rows: int, batch_size: int, generator: torch.Generator) -> list[int]:
    """`batch_size` distinct row indices (all rows, shuffled, when there are fewer)."""
    return torch.randperm(n_rows, generator=generator)[:batch_size].tolist()
