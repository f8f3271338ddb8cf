"""Which training samples each client holds, and each client's batches.

The samples are the disjoint windows tokens[i * seq_len : (i + 1) * seq_len] of the training
stream (as in DP-SGD: a token belongs to one sample, so to one client).

    parts = partition_windows(num_windows, clients=10, partition="dirichlet", alpha=0.1, seed=0)
    data = ClientData(tokens, parts[3], seq_len=256, batch_size=8, micro_batch_size=4, seed=0, client=3)
    micro_batches = data.batch(step)

- iid: a seeded permutation of the windows dealt out in near-equal parts.
- dirichlet: Hsu et al. (2019)'s label skew, with the window's *source* as its label: the stream's
  `sources` contiguous segments (documents keep their corpus order, so a segment is a region of
  the data: a module, a file) or its files. Each source's windows are split among the clients in
  proportions drawn from Dirichlet(alpha); alpha -> 0 gives each client one source.
- files: partition="files" builds one ClientData per data file instead (fastlm.federated.run).
"""
from __future__ import annotations

import numpy as np
import torch

from fastlm.data.loader import pack_documents
from fastlm.train.errors import ConfigError

def partition_windows(num_windows: int, *, clients: int, partition: str = "iid", alpha: float = 0.5,
                      sources: int = 10, source_of: np.ndarray | None = None, seed: int = 0) -> list[np.ndarray]:
    """The window indices of each client (sorted, disjoint, together all windows).

    source_of: the source (a small integer) of every window for dirichlet; default: `sources`
    contiguous equal segments of the stream.
    """
    if num_windows < clients:
        raise ConfigError(f"federated.clients = {clients}: the training data has only {num_windows} windows of "
                          f"data.seq_len tokens (at least one per client needed)")
    rng = np.random.default_rng([seed, 7])
    if partition == "iid":
        return [np.sort(part) for part in np.array_split(rng.permutation(num_windows), clients)]
    if partition != "dirichlet":
        raise ValueError(f"partition {partition!r}: expected iid or dirichlet (files: one client per data file)")
    if source_of is None:
        source_of = np.minimum(np.arange(num_windows) * sources // num_windows, sources - 1)
    owner = np.empty(num_windows, dtype=np.int64)
    for label in np.unique(source_of):
        members = rng.permutation(np.flatnonzero(source_of == label))
        shares = rng.dirichlet(np.full(clients, alpha))
        cuts = (np.cumsum(shares)[:-1] * len(members)).astype(np.int64)
        for client, part in enumerate(np.split(members, cuts)):
            owner[part] = client
    # A client left without data (likely when alpha is small) takes one window from the largest client.
    counts = np.bincount(owner, minlength=clients)
    for empty in np.flatnonzero(counts == 0):
        largest = int(np.argmax(counts))
        owner[rng.choice(np.flatnonzero(owner == largest))] = empty
        counts[largest] -= 1
        counts[empty] += 1
    return [np.flatnonzero(owner == c) for c in range(clients)]


class ClientData:
    """One client's windows and its batches: step s takes the next batch_size windows of a per-epoch
    seeded permutation (every window once per epoch), as micro-batches of micro_batch_size.
    A client with fewer windows than batch_size trains on all of them (a multiple of micro_batch_size) each step."""

    def __init__(self, tokens, windows: np.ndarray, *, seq_len: int, batch_size: int, micro_batch_size: int,
                 seed: int, client: int, pack_eos_id: int | None = None):
        self.tokens, self.windows = tokens, np.asarray(windows, dtype=np.int64)
        if len(self.windows) == 0:
            raise ValueError(f"client {client} holds no training windows")
        self.seq_len, self.micro_batch_size = seq_len, micro_batch_size
        n = len(self.windows)  # fewer than a batch: all of them, in equal micro-batches (TrainStep's mean)
        self.batch_size = batch_size if n >= batch_size else (n if n < micro_batch_size else
                                                             n // micro_batch_size * micro_batch_size)
        self.seed, self.client, self.pack_eos_id = seed, client, pack_eos_id

    @property
    def num_samples(self) -> int:
        return len(self.windows)

    def batch_windows(self, step: int) -> np.ndarray:
        """The window indices of this client's local step `step` (counted over all its rounds)."""
        per_epoch = len(self.windows) // self.batch_size
        epoch, index = divmod(step, per_epoch)
        order = np.random.default_rng([self.seed, self.client, epoch, 3]).permutation(len(self.windows))
        return self.windows[order[index * self.batch_size:(index + 1) * self.batch_size]]

    def batch(self, step: int) -> list:
        starts = self.batch_windows(step) * self.seq_len
        idx = starts[:, None] + np.arange(self.seq_len)[None, :]
        rows = torch.from_numpy(np.asarray(self.tokens[idx], dtype=np.int64))
        micro = list(rows.split(self.micro_batch_size))
        if self.pack_eos_id is not None:
            return [pack_documents(mb, self.pack_eos_id) for mb in micro]
        return micro
