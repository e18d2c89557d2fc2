"""softmax-lab's DDP: Lightning's DDP strategy without the DistributedDataParallel wrapper.

Lightning's DDP (process launch, process group, metric sync, rank-0 logging and checkpointing) is
kept whole; only the wrapper goes, because it refuses impl=scratch (no parameter requires a
gradient) and expects one backward per forward, which the speed mode breaks. The module keeps the
replicas identical itself: see steps/hand_steps.py. `trainer=ddp` and `trainer=ddp_cpu` select it.
"""

from __future__ import annotations

from pytorch_lightning import strategies


class DDPStrategy(strategies.DDPStrategy):
    def configure_ddp(self) -> None:
        pass  # no DistributedDataParallel wrapper: see the module docstring
