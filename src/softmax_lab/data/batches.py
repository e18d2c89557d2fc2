"""Batches sliced from whole tensors: no Dataset, no collate, no worker processes (an epoch costs what the model
costs; the textbook's DataLoader pipeline spends 95% of its time on per-sample work)."""

from __future__ import annotations

import torch


class TensorBatches:
    """Batches of (X, y) sliced from whole tensors, in a permutation that depends only on (seed, epoch).

    `epoch` is a callable read when an epoch's iteration starts (the data module passes the trainer's
    current epoch), so a resumed run replays exactly the batches it would have seen. Under DDP each process
    takes a disjoint, equal share (every world_size-th index) of the epoch's permutation. The last partial
    batch is kept.

    `limit` caps the minibatches of an epoch (an int, or a fraction as Lightning computes it). With
    `group=K` (the speed mode, docs/speed.md) it yields lists of K minibatches, the last list possibly
    shorter: the module takes one SGD step per minibatch, and Lightning's per-step machinery, which costs
    about as much as a minibatch of this model, runs once per K.
    """

    def __init__(self, X, y, batch_size, shuffle=False, seed=0, rank=0, world_size=1, group=None, limit=None,
                 epoch=lambda: 0):
        self.X, self.y, self.batch_size, self.group = X, y, batch_size, group
        self.shuffle, self.seed, self.rank, self.world_size = shuffle, seed, rank, world_size
        self.limit, self.epoch = limit, epoch

    def indices(self) -> torch.Tensor:
        n = len(self.X)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch())
            order = torch.randperm(n, generator=g)
            if self.world_size > 1:  # equal shares so every replica takes the same number of steps
                order = order[: n - n % self.world_size]
        else:
            order = torch.arange(n)
        return order[self.rank :: self.world_size].to(self.X.device)

    @property
    def num_minibatches(self) -> int:
        n, world = len(self.X), self.world_size
        share = (n - n % world) // world if self.shuffle else -(-(n - self.rank) // world)
        full = -(-share // self.batch_size)
        if self.limit is None:
            return full
        return min(full, self.limit) if isinstance(self.limit, int) else int(full * self.limit)  # as Lightning

    def __len__(self) -> int:
        return -(-self.num_minibatches // self.group) if self.group else self.num_minibatches

    def minibatches(self):
        count, size = self.num_minibatches, self.batch_size
        if not self.shuffle and self.world_size == 1:  # contiguous views, no copy
            for i in range(count):
                yield self.X[i * size : (i + 1) * size], self.y[i * size : (i + 1) * size]
            return
        idx = self.indices()
        for i in range(count):  # index_select: 3x faster than X[j] for 256 rows of 784 on the CPU (measured)
            j = idx[i * size : (i + 1) * size]
            yield torch.index_select(self.X, 0, j), torch.index_select(self.y, 0, j)

    def __iter__(self):
        if not self.group:
            yield from self.minibatches()
            return
        chunk = []
        for b in self.minibatches():
            chunk.append(b)
            if len(chunk) == self.group:
                yield chunk
                chunk = []
        if chunk:
            yield chunk
