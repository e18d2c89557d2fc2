"""Torch function modes that make the CPU and the `meta` device behave, for a test, like an accelerator would.

No GPU has been available to this project. PyTorch's `meta` device has no data, and alone it lets a
matmul, gather or in-place op with a CPU tensor pass; these modes refuse what an accelerator refuses:

OneDevice    any call whose tensor arguments are on the CPU and on another device at once (stricter than a
             GPU: also 0-dim CPU tensors, which a GPU accepts in element-wise ops, at one copy each time)
NoFloat64    a float64 tensor off the CPU, as an argument or a result (MPS has no float64)
HostReads    counts every read of a tensor into Python (item, tolist, bool, int, float, numpy, cpu): on an
             accelerator each waits for the device. On `meta` it answers with zeros, so code that reads
             its results (a metric's compute, an epoch's reduction) runs on `meta` too.
"""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

READS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__int__,
         torch.Tensor.__float__, torch.Tensor.numpy, torch.Tensor.cpu, torch.Tensor.__index__}


def tensors(x):
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, list | tuple):
        for v in x:
            yield from tensors(v)
    elif isinstance(x, dict):
        for v in x.values():
            yield from tensors(v)


class OneDevice(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        devices = {t.device.type for t in tensors((args, kwargs))}
        if "cpu" in devices and len(devices) > 1:
            raise RuntimeError(f"{getattr(func, '__name__', func)} mixes devices {sorted(devices)}")
        return func(*args, **kwargs)


class NoFloat64(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        for t in tensors((args, kwargs, result)):
            if t.dtype == torch.float64 and t.device.type != "cpu":
                raise RuntimeError(f"{getattr(func, '__name__', func)}: float64 on {t.device.type}")
        return result


class HostReads(TorchFunctionMode):
    """`count` reads of tensors off the CPU (or of every tensor, with `every_device=True`)."""

    def __init__(self, every_device: bool = False):
        super().__init__()
        self.every_device, self.count, self.where = every_device, 0, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in READS and args and isinstance(args[0], torch.Tensor):
            t = args[0]
            if self.every_device or t.device.type != "cpu":
                self.count += 1
                self.where.append(func.__name__)
            if t.device.type == "meta":  # no data to read: zeros of the right shape and type
                zeros = torch.zeros(t.shape, dtype=t.dtype)
                return zeros if func is torch.Tensor.cpu else func(zeros, *args[1:], **kwargs)
        return func(*args, **kwargs)
