"""DDP for both implementations.

torch's DistributedDataParallel refuses a model without trainable parameters, and impl=scratch has
none (no autograd): it averages its gradients itself (module.training_step). So the scratch model
stays unwrapped; impl=nn is wrapped as usual.
"""

from __future__ import annotations

from pytorch_lightning import strategies


class DDPStrategy(strategies.DDPStrategy):
    def configure_ddp(self) -> None:
        if any(p.requires_grad for p in self.lightning_module.parameters()):
            super().configure_ddp()
