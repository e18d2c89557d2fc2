"""The losses of softmax regression, as the README's table reads.

O: (n, C) logits, y: (n,) class ids, Y = onehot(y). Every loss is the batch mean of a per-sample
loss l(o, y). Each class gives
    value(O, y)        the formula, by hand            (impl=scratch)
    grad(O, y)         dL/dO of the batch mean, by hand (impl=scratch), shape (n, C)
    torch_value(O, y)  the same number from torch.nn.functional (impl=nn, autograd)
mse, huber and l1 may be taken on probabilities (on="probs"): o is replaced by softmax(o) and the
gradient goes back through the softmax Jacobian, g -> p * (g - <g, p>).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F


def softmax(O: torch.Tensor) -> torch.Tensor:
    E = (O - O.max(dim=1, keepdim=True).values).exp()  # shift: exp never overflows
    return E / E.sum(dim=1, keepdim=True)


def logsumexp(O: torch.Tensor) -> torch.Tensor:
    m = O.max(dim=1).values
    return m + (O - m[:, None]).exp().sum(dim=1).log()


def onehot(y: torch.Tensor, C: int, dtype: torch.dtype) -> torch.Tensor:
    Y = torch.zeros(len(y), C, dtype=dtype, device=y.device)
    return Y.scatter_(1, y[:, None], 1.0)


def softmax_backward(P: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """Chain rule through p = softmax(o): dL/do = p * (dL/dp - <dL/dp, p>)."""
    return P * (G - (G * P).sum(dim=1, keepdim=True))


class Loss(ABC):
    """A loss of the table. `default_lr` is the SGD learning rate it trains well at (10 epochs, batch 256);
    conf/optimizer/sgd.yaml reads it, and an explicit optimizer.lr wins."""

    name = ""

    def __init__(self, default_lr: float = 0.1):
        self.default_lr = default_lr

    @abstractmethod
    def value(self, O, y): ...

    @abstractmethod
    def grad(self, O, y): ...

    @abstractmethod
    def torch_value(self, O, y): ...

    def value_and_grad(self, O, y):
        """(value, grad) in one pass where the two share work (the training step of impl=scratch)."""
        return self.value(O, y), self.grad(O, y)

    def twice_differentiable_value(self, O, y):
        """The loss in a form autograd differentiates twice (maths/sharpness.py): torch's own by default."""
        return self.torch_value(O, y)

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in vars(self).items() if k != "default_lr")
        return f"{type(self).__name__}({opts})"


class CrossEntropy(Loss):
    """l = logsumexp(o) - o_y;  dl/do = softmax(o) - Y."""

    name = "ce"

    def value(self, O, y):
        return (logsumexp(O) - O.gather(1, y[:, None]).squeeze(1)).mean()

    def grad(self, O, y):
        return (softmax(O) - onehot(y, O.shape[1], O.dtype)) / len(O)

    def torch_value(self, O, y):
        return F.cross_entropy(O, y)

    def value_and_grad(self, O, y):
        m = O.amax(dim=1, keepdim=True)
        E = (O - m).exp_()  # one softmax for both
        s = E.sum(dim=1, keepdim=True)
        value = (s.log() + m - O.gather(1, y[:, None])).mean()
        G = E.div_(s).scatter_add_(1, y[:, None], O.new_full((len(O), 1), -1.0))  # softmax(o) - Y
        return value, G.div_(len(O))


class _OnOneHot(Loss):
    """Losses of o - Y, on the logits or (on="probs") on softmax(o)."""

    def __init__(self, on: str = "logits", default_lr: float = 0.01):
        super().__init__(default_lr)
        if on not in ("logits", "probs"):
            raise ValueError(f"loss.on={on!r}: expected 'logits' or 'probs'")
        self.on = on

    def _outputs(self, O):
        return softmax(O) if self.on == "probs" else O

    def value(self, O, y):
        E = self._outputs(O) - onehot(y, O.shape[1], O.dtype)
        return self.per_sample(E).mean()

    def grad(self, O, y):
        P = self._outputs(O)
        # x fl(1/n) rather than / n: rounded as autograd's gradient of `sum / n` is, so on the logits the impls
        # take bit-identical steps
        G = self.per_sample_grad(P - onehot(y, O.shape[1], O.dtype)) * (1.0 / len(O))
        return softmax_backward(P, G) if self.on == "probs" else G

    def torch_value(self, O, y):
        P = F.softmax(O, dim=1) if self.on == "probs" else O
        return self.torch_sum(P, F.one_hot(y, O.shape[1]).to(O.dtype)) / len(O)


class SquaredError(_OnOneHot):
    """l = 1/2 sum_i (o_i - Y_i)^2;  dl/do = o - Y."""

    name = "mse"

    def per_sample(self, E):
        return 0.5 * (E * E).sum(dim=1)

    def per_sample_grad(self, E):
        return E

    def torch_sum(self, P, Y):
        return 0.5 * F.mse_loss(P, Y, reduction="sum")


class Huber(_OnOneHot):
    """l = sum_i h_d(o_i - Y_i), h_d(e) = e^2/2 if |e| <= d else d(|e| - d/2);  dl/do = clamp(o - Y, -d, d)."""

    name = "huber"

    def __init__(self, delta: float = 1.0, on: str = "logits", default_lr: float = 0.01):
        super().__init__(on, default_lr)
        self.delta = delta

    def per_sample(self, E):
        A, d = E.abs(), self.delta
        return torch.where(A <= d, 0.5 * E * E, d * (A - 0.5 * d)).sum(dim=1)

    def per_sample_grad(self, E):
        return E.clamp(-self.delta, self.delta)

    def torch_sum(self, P, Y):
        return F.huber_loss(P, Y, delta=self.delta, reduction="sum")


class L1(_OnOneHot):
    """l = sum_i |o_i - Y_i|;  dl/do = sign(o - Y)."""

    name = "l1"

    def per_sample(self, E):
        return E.abs().sum(dim=1)

    def per_sample_grad(self, E):
        return E.sign()

    def torch_sum(self, P, Y):
        return F.l1_loss(P, Y, reduction="sum")


class Margin(Loss):
    """Multiclass hinge: l = sum_{i != y} max(0, D - (o_y - o_i));
    dl/do_i = 1 for each violating i != y, dl/do_y = -(number of violators)."""

    name = "margin"

    def __init__(self, margin: float = 1.0, default_lr: float = 0.1):
        super().__init__(default_lr)
        self.margin = margin

    def _slack(self, O, y):
        S = self.margin - O.gather(1, y[:, None]) + O  # D - (o_y - o_i), (n, C)
        return S.scatter(1, y[:, None], 0.0)  # i = y does not count

    def value(self, O, y):
        return self._slack(O, y).clamp(min=0).sum(dim=1).mean()

    def grad(self, O, y):
        # rounded as torch's multi_margin_loss backward is, times C as in torch_value, so the impls take bit-identical
        # steps: each violator gets g = fl(1/(nC)); the true class -g once per violator, added one at a time
        n, C = O.shape
        V = (self._slack(O, y) > 0).to(O.dtype)  # violators
        g = O.new_full((), 1.0 / (n * C))
        running = [O.new_zeros(())]  # running[k]: k violators' g added one by one, in O's precision
        for _ in range(C - 1):
            running.append(running[-1] + g)
        target = torch.stack(running)[V.sum(dim=1).long()]
        return (V * g).scatter(1, y[:, None], -target[:, None]) * C

    def torch_value(self, O, y):
        return F.multi_margin_loss(O, y, margin=self.margin) * O.shape[1]  # torch divides by C

    def twice_differentiable_value(self, O, y):
        return self.value(O, y)  # torch's multi_margin_loss has no double backward


class BinaryCrossEntropy(Loss):
    """One-vs-rest binary cross-entropy with logits: each class its own logistic regression,
    l = sum_i [softplus(o_i) - Y_i o_i]  (= -sum_i [Y_i log sigmoid(o_i) + (1 - Y_i) log(1 - sigmoid(o_i))]);
    dl/do = sigmoid(o) - Y."""

    name = "bce"

    @staticmethod
    def _softplus(O):
        return O.clamp(min=0) + (-O.abs()).exp().log1p()  # log(1 + e^o) without overflow

    def value(self, O, y):
        return (self._softplus(O) - onehot(y, O.shape[1], O.dtype) * O).sum(dim=1).mean()

    def grad(self, O, y):
        # rounded as autograd's gradient of `sum / n` is (torch.sigmoid, then x fl(1/n), which differs from
        # / n when n is not a power of two: the epoch's last batch), so both impls take bit-identical steps
        return (torch.sigmoid(O) - onehot(y, O.shape[1], O.dtype)) * (1.0 / len(O))

    def torch_value(self, O, y):
        Y = F.one_hot(y, O.shape[1]).to(O.dtype)
        return F.binary_cross_entropy_with_logits(O, Y, reduction="sum") / len(O)


LOSSES = {cls.name: cls for cls in (CrossEntropy, SquaredError, Margin, Huber, L1, BinaryCrossEntropy)}


def name_of(target: str) -> str:
    """The `loss=` name of a loss class path: softmax_lab.losses.Huber -> huber."""
    cls = target.rsplit(".", 1)[-1]
    return next((name for name, c in LOSSES.items() if c.__name__ == cls), cls.lower())
