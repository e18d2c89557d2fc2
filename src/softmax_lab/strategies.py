"""DDP for both implementations, with the gradients averaged by the module itself.

The module takes several SGD steps per Lightning step (data.batches_per_step), so torch's
DistributedDataParallel, which expects one backward per forward, cannot do the averaging; and it
refuses impl=scratch outright (no parameter requires a gradient). The module averages every step's
gradients across processes instead (strategy.reduce, one all-reduce per tensor), so the replicas
take identical steps. This strategy is Lightning's DDP (process launch, process group, samplers,
metric sync, rank-0 logging and checkpointing) without the DistributedDataParallel wrapper.
"""

from __future__ import annotations

from pytorch_lightning import strategies


class DDPStrategy(strategies.DDPStrategy):
    def configure_ddp(self) -> None:
        pass  # no DistributedDataParallel wrapper: see the module docstring
