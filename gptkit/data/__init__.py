"""Data: bundled corpora, `gptkit prepare` (text -> token files) and the memory-mapped `TokenDataset`.

The prepare function lives at `gptkit.data.prepare.prepare`; it is not re-exported here because a
function named `prepare` would shadow the `gptkit.data.prepare` module of the same name.
"""

from gptkit.data.dataset import TokenDataset
from gptkit.data.prepare import bundled_corpora, bundled_corpus_path

__all__ = ["TokenDataset", "bundled_corpora", "bundled_corpus_path"]
