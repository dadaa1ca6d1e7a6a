"""A minimal Adam (Kingma & Ba, 2015, Algorithm 1) for the value-net fit.

``torch.optim`` imports ``torch._dynamo`` on first use: about 80 MB of resident memory and 1.2 s
of CPU in every agent process, which decides whether 24 agents start within 15 s on 2 cores and
whether an agent stays under 300 MB. The value fit needs nothing but plain Adam, so this is it;
``tests/test_trpo.py`` checks it step for step against ``torch.optim.Adam``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor


class Adam:
    """Adam with bias correction, no weight decay, no amsgrad."""

    def __init__(
        self,
        parameters: Iterable[Tensor],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.parameters = list(parameters)
        self.lr = lr
        self.betas = betas
        self.eps = eps
        self.step_count = 0
        self.first_moments = [torch.zeros_like(p) for p in self.parameters]
        self.second_moments = [torch.zeros_like(p) for p in self.parameters]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for parameter in self.parameters:
            parameter.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """θ ← θ − lr·m̂/(√v̂ + ε) with m, v the bias-corrected moment estimates."""
        self.step_count += 1
        beta1, beta2 = self.betas
        correction1 = 1 - beta1**self.step_count
        correction2 = 1 - beta2**self.step_count
        for parameter, first, second in zip(
            self.parameters, self.first_moments, self.second_moments, strict=True
        ):
            if parameter.grad is None:
                continue
            gradient = parameter.grad
            first.mul_(beta1).add_(gradient, alpha=1 - beta1)
            second.mul_(beta2).addcmul_(gradient, gradient, value=1 - beta2)
            denominator = (second / correction2).sqrt_().add_(self.eps)
            parameter.addcdiv_(first, denominator, value=-self.lr / correction1)

    def state_dict(self) -> dict[str, Any]:
        return {
            "lr": self.lr,
            "betas": self.betas,
            "eps": self.eps,
            "step_count": self.step_count,
            "first_moments": [m.clone() for m in self.first_moments],
            "second_moments": [v.clone() for v in self.second_moments],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lr, self.betas, self.eps = state["lr"], tuple(state["betas"]), state["eps"]
        self.step_count = state["step_count"]
        for mine, saved in zip(self.first_moments, state["first_moments"], strict=True):
            mine.copy_(saved)
        for mine, saved in zip(self.second_moments, state["second_moments"], strict=True):
            mine.copy_(saved)
