"""Policy and value networks shared by the trust-region agents, and fast action sampling.

A :class:`CategoricalPolicy` maps one agent's own observation o^i to one categorical distribution
per head: I-TRPO has a single head (its own action), MATRPO has N heads, one per agent's action,
so that π^i(a|o^i) = Π_n π^i(a^n|o^i) (MATRPO section IV).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

LAST_LAYER_SCALE = 0.01
"""Scale of the policy's output weights: the initial policy is close to uniform."""


def mlp(
    in_size: int,
    out_size: int,
    hidden: Sequence[int] = (128, 128),
    activation: type[nn.Module] = nn.SELU,
) -> nn.Sequential:
    """Fully connected network ``in -> hidden... -> out`` with ``activation`` between layers.

    Weights are LeCun-normal (std 1/sqrt(fan_in)) and biases zero, the initialisation SELU's
    self-normalising property assumes (Klambauer et al., 2017); the output layer is linear.
    """
    sizes = [in_size, *hidden, out_size]
    layers: list[nn.Module] = []
    for index, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        linear = nn.Linear(fan_in, fan_out)
        nn.init.normal_(linear.weight, std=1.0 / math.sqrt(fan_in))
        nn.init.zeros_(linear.bias)
        layers.append(linear)
        if index < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


class CategoricalPolicy(nn.Module):
    """π_θ(a|o) = Π_n Categorical(a^n; softmax(logits_n(o))) with one head per ``head_sizes``.

    :meth:`forward` returns the logits of all heads concatenated along the last axis, shape
    (B, Σ head_sizes); :meth:`split_log_softmax` turns them into per-head log-probabilities.
    """

    def __init__(
        self,
        observation_size: int,
        head_sizes: Sequence[int],
        hidden: Sequence[int] = (128, 128),
        activation: type[nn.Module] = nn.SELU,
    ) -> None:
        super().__init__()
        if not head_sizes or min(head_sizes) < 1:
            raise ValueError(
                f"head_sizes must list at least one head of at least one action, got "
                f"{tuple(head_sizes)}; pass e.g. (5,) for one agent with 5 actions"
            )
        self.head_sizes: tuple[int, ...] = tuple(int(size) for size in head_sizes)
        self.offsets: tuple[int, ...] = (0, *itertools.accumulate(self.head_sizes))
        self.uniform_heads = len(set(self.head_sizes)) == 1
        self.body = mlp(observation_size, sum(self.head_sizes), hidden, activation)
        last = self.body[-1]
        assert isinstance(last, nn.Linear)
        with torch.no_grad():
            last.weight.mul_(LAST_LAYER_SCALE)
        self._numpy_forward = NumpyForward(self.body)

    @property
    def n_heads(self) -> int:
        """Number of categorical heads (1 for I-TRPO, N for MATRPO)."""
        return len(self.head_sizes)

    def forward(self, observations: Tensor) -> Tensor:
        """Concatenated logits of all heads, (B, Σ head_sizes)."""
        return self.body(observations)

    def numpy_logits(self, observations: np.ndarray) -> np.ndarray:
        """Logits of all heads for float32 ``observations`` (B, obs), computed in numpy."""
        return self._numpy_forward(observations)

    def head_logits(self, logits: Tensor, head: int) -> Tensor:
        """The columns of ``logits`` that belong to ``head``, (B, head_sizes[head])."""
        return logits[..., self.offsets[head] : self.offsets[head + 1]]

    def split_log_softmax(self, logits: Tensor) -> list[Tensor]:
        """Per-head log-probabilities log π(·|o), a list of (B, head_sizes[n])."""
        if self.uniform_heads:
            shaped = logits.reshape(*logits.shape[:-1], self.n_heads, self.head_sizes[0])
            return list(torch.log_softmax(shaped, dim=-1).unbind(dim=-2))
        return [torch.log_softmax(part, dim=-1) for part in logits.split(self.head_sizes, dim=-1)]

    def log_prob_from_logits(self, logits: Tensor, actions: Tensor) -> Tensor:
        """log π(a^n|o) per head, (n_heads, B), for ``actions`` of shape (B, n_heads)."""
        if self.uniform_heads:
            shaped = logits.reshape(logits.shape[0], self.n_heads, self.head_sizes[0])
            log_probs = torch.log_softmax(shaped, dim=-1)
            return log_probs.gather(-1, actions.unsqueeze(-1)).squeeze(-1).T
        return torch.stack(
            [
                head.gather(-1, actions[:, n : n + 1]).squeeze(-1)
                for n, head in enumerate(self.split_log_softmax(logits))
            ]
        )

    def log_prob(self, observations: Tensor, actions: Tensor) -> Tensor:
        """log π_θ(a^n|o) per head, (n_heads, B); ``actions`` is int64 (B, n_heads)."""
        return self.log_prob_from_logits(self(observations), actions)

    def kl_from_logits(self, old_logits: Tensor, logits: Tensor) -> Tensor:
        """Mean over samples of KL(π_old(·|o) ‖ π(·|o)), summed over heads.

        Summing over heads gives the KL of the product distribution Π_n π(a^n|o), the quantity
        MATRPO's trust region bounds (the Hessian H over all heads, eq. (22)); with one head it
        is the usual TRPO KL. ``old_logits`` is treated as a constant.
        """
        old_logits = old_logits.detach()
        total = logits.new_zeros(())
        for old, new in zip(
            self.split_log_softmax(old_logits), self.split_log_softmax(logits), strict=True
        ):
            total = total + (old.exp() * (old - new)).sum(dim=-1).mean()
        return total

    def kl(self, observations: Tensor, old_logits: Tensor) -> Tensor:
        """Mean KL(π_old‖π_θ) over samples, summed over heads (see :meth:`kl_from_logits`)."""
        return self.kl_from_logits(old_logits, self(observations))

    def logit_fisher_product(self, logits: Tensor, tangent: Tensor) -> Tensor:
        """Per head (diag(p) − p pᵀ)·t with p = softmax(logits_n): the Hessian of the KL with
        respect to the logits at π_old = π, i.e. the Fisher of each categorical in its logits.

        ``logits`` and ``tangent`` are (B, Σ head_sizes); so is the result.
        """
        if self.uniform_heads:
            shape = (logits.shape[0], self.n_heads, self.head_sizes[0])
            probabilities = torch.softmax(logits.reshape(shape), dim=-1)
            tangent = tangent.reshape(shape)
            mixed = probabilities * tangent
            mixed -= probabilities * mixed.sum(dim=-1, keepdim=True)
            return mixed.reshape(logits.shape)
        parts = []
        for head, head_tangent in zip(
            logits.split(self.head_sizes, dim=-1),
            tangent.split(self.head_sizes, dim=-1),
            strict=True,
        ):
            probabilities = torch.softmax(head, dim=-1)
            mixed = probabilities * head_tangent
            parts.append(mixed - probabilities * mixed.sum(dim=-1, keepdim=True))
        return torch.cat(parts, dim=-1)

    def entropy_from_logits(self, logits: Tensor) -> Tensor:
        """Entropy H[π(·|o)] per head, (n_heads, B)."""
        return torch.stack(
            [-(head.exp() * head).sum(dim=-1) for head in self.split_log_softmax(logits)]
        )

    def entropy(self, observations: Tensor) -> Tensor:
        """Entropy per head, (n_heads, B)."""
        return self.entropy_from_logits(self(observations))


class ValueNet(nn.Module):
    """State-value estimate V^i(o^i) trained on the agent's own reward (eq. (19)).

    The network predicts standardized returns; V(o) = shift + scale·body(o). Before each fit
    :meth:`update_statistics` sets (shift, scale) to the batch's return mean and standard
    deviation (the agent's own statistics). Without it, returns of order −200 (spread, 100-step
    episodes) take Adam hundreds of iterations to reach and the advantages stay dominated by the
    value error.
    """

    def __init__(self, observation_size: int, hidden: Sequence[int] = (128, 128)) -> None:
        super().__init__()
        self.body = mlp(observation_size, 1, hidden)
        self.register_buffer("shift", torch.zeros(()))
        self.register_buffer("scale", torch.ones(()))

    def forward(self, observations: Tensor) -> Tensor:
        """V(o), shape (B,)."""
        return self.shift + self.scale * self.standardized(observations)

    def standardized(self, observations: Tensor) -> Tensor:
        """The network's own output, (V(o) − shift)/scale, shape (B,)."""
        return self.body(observations).squeeze(-1)

    @torch.no_grad()
    def update_statistics(self, returns: Tensor, min_scale: float = 1e-3) -> None:
        """Set (shift, scale) to the mean and standard deviation of ``returns``."""
        self.shift.copy_(returns.mean())
        if returns.numel() > 1:
            self.scale.copy_(returns.std().clamp_min(min_scale))


SELU_ALPHA = 1.6732632423543772
SELU_SCALE = 1.0507009873554805


def _selu_inplace(values: np.ndarray) -> np.ndarray:
    """SELU(x) = scale·(max(x, 0) + alpha·(exp(min(x, 0)) − 1)), as torch.nn.SELU."""
    negative = np.minimum(values, 0.0)
    np.exp(negative, out=negative)
    negative -= 1.0
    negative *= SELU_ALPHA * SELU_SCALE
    np.maximum(values, 0.0, out=values)
    values *= SELU_SCALE
    values += negative
    return values


def _relu_inplace(values: np.ndarray) -> np.ndarray:
    return np.maximum(values, 0.0, out=values)


def _tanh_inplace(values: np.ndarray) -> np.ndarray:
    return np.tanh(values, out=values)


_NUMPY_ACTIVATIONS = {nn.SELU: _selu_inplace, nn.ReLU: _relu_inplace, nn.Tanh: _tanh_inplace}


class NumpyForward:
    """Inference-only forward pass of an :func:`mlp` in numpy, for acting.

    On small batches every torch operator costs several µs of dispatch, several times the
    arithmetic; numpy on views that share memory with the torch parameters is about twice as
    fast. The views follow in-place updates (optimizer steps, ``load_state_dict``,
    :func:`set_flat_parameters`); they are rebuilt when a parameter's storage changes
    (``.to()``, ``.data =``), but a parameter replaced by a new ``Parameter`` object is not
    seen. Networks with other layers fall back to torch under ``no_grad``.
    """

    def __init__(self, network: nn.Sequential) -> None:
        self.network = network
        self._data_pointers = [parameter.data_ptr for parameter in network.parameters()]
        self._pointers: list[int] = []
        self._layers: list[tuple[np.ndarray, np.ndarray, Callable[[np.ndarray], np.ndarray]]] = []
        self._supported = all(
            isinstance(layer, nn.Linear) or type(layer) in _NUMPY_ACTIVATIONS for layer in network
        )

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        """Network output for ``inputs`` (B, in_size)."""
        if not self._supported:
            with torch.no_grad():
                return self.network(torch.from_numpy(inputs)).numpy()
        if [data_pointer() for data_pointer in self._data_pointers] != self._pointers:
            self._rebuild()
        values = inputs
        for weight_transposed, bias, activation in self._layers:
            values = values @ weight_transposed
            values += bias
            values = activation(values)
        return values

    def _rebuild(self) -> None:
        self._pointers = [data_pointer() for data_pointer in self._data_pointers]
        self._layers = []
        for layer in self.network:
            if isinstance(layer, nn.Linear):
                weight = layer.weight.detach().cpu().numpy()
                self._layers.append((weight.T, layer.bias.detach().cpu().numpy(), _identity))
            else:
                weight_transposed, bias, _ = self._layers[-1]
                self._layers[-1] = (weight_transposed, bias, _NUMPY_ACTIVATIONS[type(layer)])


def _identity(values: np.ndarray) -> np.ndarray:
    return values


def sample_actions(
    policy: CategoricalPolicy,
    observations: np.ndarray,
    head: int,
    rng: np.random.Generator,
    deterministic: bool = False,
) -> np.ndarray:
    """Draw a ~ π(·|o) for one head, int64 (K,), by the Gumbel-max trick in numpy.

    Called at every environment step, so it avoids ``torch.distributions.Categorical`` and
    torch dispatch altogether: the logits come from :meth:`CategoricalPolicy.numpy_logits`, and
    argmax_a(logits_a + G_a) with G_a ~ Gumbel(0, 1) i.i.d. is an exact draw from
    softmax(logits). It is four times cheaper than inverse-CDF sampling (one generator call
    instead of max, exp, cumsum and a comparison) and cannot overflow. ``deterministic`` takes
    the mode.
    """
    logits = policy.numpy_logits(np.ascontiguousarray(observations, dtype=np.float32))
    logits = logits[:, policy.offsets[head] : policy.offsets[head + 1]]
    if deterministic:
        return logits.argmax(axis=-1).astype(np.int64)
    perturbed = rng.gumbel(size=logits.shape)
    perturbed += logits
    return perturbed.argmax(axis=-1).astype(np.int64)


def flat_parameters(parameters: Iterable[Tensor]) -> Tensor:
    """θ as one detached vector (the order of ``parameters``)."""
    return torch.cat([parameter.detach().reshape(-1) for parameter in parameters])


def set_flat_parameters(parameters: Iterable[Tensor], flat: Tensor) -> None:
    """Copy the vector ``flat`` into ``parameters`` in place (inverse of flat_parameters)."""
    offset = 0
    with torch.no_grad():
        for parameter in parameters:
            size = parameter.numel()
            parameter.copy_(flat[offset : offset + size].view_as(parameter))
            offset += size
    if offset != flat.numel():
        raise ValueError(f"flat vector has {flat.numel()} entries, the parameters {offset}")


def flat_gradient(
    output: Tensor,
    parameters: Sequence[Tensor],
    create_graph: bool = False,
    retain_graph: bool | None = None,
) -> Tensor:
    """∇_θ output as one vector; parameters that ``output`` does not depend on get zeros."""
    gradients = torch.autograd.grad(
        output,
        parameters,
        create_graph=create_graph,
        retain_graph=retain_graph,
        allow_unused=True,
    )
    return torch.cat(
        [
            (torch.zeros_like(parameter) if gradient is None else gradient).reshape(-1)
            for parameter, gradient in zip(parameters, gradients, strict=True)
        ]
    )
