"""The replicas' arithmetic (steps/hand_steps.py) with a stand-in for the DDP strategy that plays a second process:
the loss and every gradient averaged in one reduce and written back in place, rank 0's parameters copied into each
replica, nothing done on one process. The real thing, with gloo processes, is tests/test_ddp.py (slow)."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from softmax_lab.steps.hand_steps import average_loss_and_grads, averager, broadcast_parameters


class OtherRank:
    """A strategy whose reduce averages with what a second process holds, and whose broadcast hands rank 0's."""

    def __init__(self, other: torch.Tensor | None = None, rank0: list[torch.Tensor] | None = None):
        self.other, self.rank0, self.calls = other, rank0, []
        self.model = torch.nn.Linear(2, 2)

    def reduce(self, flat, reduce_op):
        self.calls.append(("reduce", reduce_op, flat.clone()))
        return (flat + self.other) / 2

    def broadcast(self, values, src):
        self.calls.append(("broadcast", src, [v.clone() for v in values]))
        return self.rank0


def test_the_loss_and_grads_are_averaged_in_one_reduce_and_written_back():
    W, b = torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([10.0, 20.0])
    other = torch.tensor([3.0, 3.0, 2.0, 1.0, 0.0, 0.0, 40.0])  # the other process's loss, W, b, flattened
    strategy = OtherRank(other)
    mean = average_loss_and_grads(strategy, torch.tensor(1.0), [W, b])
    assert [c[:2] for c in strategy.calls] == [("reduce", "mean")]
    assert torch.equal(strategy.calls[0][2], torch.tensor([1.0, 1.0, 2.0, 3.0, 4.0, 10.0, 20.0]))
    assert mean.item() == 2.0
    assert torch.equal(W, torch.tensor([[2.0, 2.0], [2.0, 2.0]])) and torch.equal(b, torch.tensor([5.0, 30.0]))


def test_the_loss_travels_in_the_grads_dtype_and_comes_back_in_it():
    W = torch.tensor([1.0, 3.0])  # float32 gradients, a float64 loss
    mean = average_loss_and_grads(OtherRank(torch.tensor([3.0, 1.0, 1.0])), torch.tensor(1.0, dtype=torch.float64),
                                  [W])
    assert mean.dtype == torch.float32 and mean.item() == 2.0 and torch.equal(W, torch.tensor([1.0, 2.0]))


def test_a_loss_alone_is_averaged_when_ddp_averages_the_grads():
    strategy = OtherRank(torch.tensor([3.0]))
    assert average_loss_and_grads(strategy, torch.tensor(1.0, dtype=torch.float64), []).item() == 2.0


def test_rank_zeros_parameters_are_copied_into_each_replica_in_their_dtype():
    params = [torch.zeros(2, 2, dtype=torch.float64), torch.zeros(2)]
    rank0 = [torch.ones(2, 2), torch.full((2,), 7.0)]
    trainer = SimpleNamespace(world_size=2, strategy=OtherRank(rank0=rank0))
    broadcast_parameters(trainer, params)
    assert trainer.strategy.calls[0][:2] == ("broadcast", 0)
    assert torch.equal(params[0], torch.ones(2, 2, dtype=torch.float64)) and torch.equal(params[1], rank0[1])


def test_one_process_broadcasts_and_averages_nothing():
    trainer = SimpleNamespace(world_size=1, strategy=OtherRank())
    params = [torch.ones(2)]
    broadcast_parameters(trainer, params)
    loss, grads = torch.tensor(3.0), [torch.ones(2)]
    assert averager(trainer)(loss, grads) is loss and trainer.strategy.calls == []


def test_two_processes_average_the_grads_unless_ddp_wrapped_the_module():
    W = torch.tensor([1.0, 1.0])
    trainer = SimpleNamespace(world_size=2, strategy=OtherRank(torch.tensor([3.0, 3.0, 3.0])))
    assert averager(trainer)(torch.tensor(1.0), [W]).item() == 2.0 and torch.equal(W, torch.tensor([2.0, 2.0]))
    trainer.strategy.model = torch.nn.parallel.DistributedDataParallel.__new__(
        torch.nn.parallel.DistributedDataParallel)  # as Lightning's own DDP wraps it (never run here)
    trainer.strategy.other = torch.tensor([3.0])
    W = torch.tensor([1.0, 1.0])
    assert averager(trainer)(torch.tensor(1.0), [W]).item() == 2.0 and torch.equal(W, torch.tensor([1.0, 1.0]))
