"""Policy and value networks shared by the trust-region agents, and fast action sampling.

A :class:`CategoricalPolicy` maps one agent's own observation o^i to one categorical distribution
per head: I-TRPO has a single head (its own action), MATRPO has N heads, one per agent's action,
so that π^i(a|o^i) = Π_n π^i(a^n|o^i) (MATRPO section IV). A :class:`ProductPolicy` does the same
for any mix of Discrete, MultiDiscrete and Box (diagonal Gaussian) heads; :func:`make_policy`
picks between them.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from p2pmarl.envs.base import ActionSpace

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


INITIAL_LOG_STD = -0.5
"""Initial log-std of every Gaussian head, in units of the Box's half-width (std ≈ 0.61 of it)."""
LOG_2PI = math.log(2.0 * math.pi)


class ProductPolicy(nn.Module):
    """π_θ(a|o) = Π_n π_n(a^n|o) with one head per agent's :class:`~p2pmarl.envs.base.ActionSpace`.

    A discrete head (``Discrete`` or ``MultiDiscrete``) is a product of categoricals, one per
    component, as in :class:`CategoricalPolicy`. A Box head is a diagonal Gaussian with a
    state-independent log-std (TRPO, Schulman et al., 2015, section 8): on a finite Box with
    centre c and half-width h, a = c + h·u with u ~ N(μ_θ(o), diag(exp(2σ))), μ from the
    network and σ a learned vector; an unbounded dimension has c = 0, h = 1. The sample u is
    not squashed: the env clips a to the Box, and log π is that of the unclipped a, the density
    the sample was drawn from.

    :meth:`forward` returns the distribution parameters of all heads, (B, P): the network's
    outputs (categorical logits and Gaussian means μ, heads in order) followed by σ broadcast
    to every row, so that the analytic Fisher (:meth:`logit_fisher_product`) covers σ through
    the same Jacobian. The methods mirror :class:`CategoricalPolicy` (``*_from_logits`` take
    these parameters); actions are (B, Σ widths), int64 or float32 (integer components as
    exact floats).
    """

    def __init__(
        self,
        observation_size: int,
        heads: Sequence[ActionSpace],
        hidden: Sequence[int] = (128, 128),
    ) -> None:
        super().__init__()
        if not heads:
            raise ValueError("ProductPolicy needs at least one head (one action space)")
        self.heads: tuple[ActionSpace, ...] = tuple(heads)
        self.widths = tuple(space.width for space in self.heads)
        self.action_offsets: tuple[int, ...] = (0, *itertools.accumulate(self.widths))
        self.categorical: list[tuple[int, int, int, int]] = []
        """(head, action column, first logit column, choices) per categorical component."""
        gaussian_head, gaussian_column, mean_column = [], [], []
        centre, half_width = [], []
        column = 0
        for head, space in enumerate(self.heads):
            first = self.action_offsets[head]
            if space.is_box:
                for d, (low, high) in enumerate(zip(space.low, space.high, strict=True)):
                    finite = math.isfinite(low) and math.isfinite(high) and high > low
                    centre.append((low + high) / 2.0 if finite else 0.0)
                    half_width.append((high - low) / 2.0 if finite else 1.0)
                    gaussian_head.append(head)
                    gaussian_column.append(first + d)
                    mean_column.append(column)
                    column += 1
            else:
                for d, choices in enumerate(space.nvec):
                    self.categorical.append((head, first + d, column, choices))
                    column += choices
        self.n_outputs = column
        self.n_gaussian = len(mean_column)
        self.gaussian_heads = tuple(gaussian_head)
        self.register_buffer("_gaussian_column", torch.tensor(gaussian_column, dtype=torch.long))
        self.register_buffer("_mean_column", torch.tensor(mean_column, dtype=torch.long))
        self.register_buffer("centre", torch.tensor(centre, dtype=torch.float32))
        self.register_buffer("half_width", torch.tensor(half_width, dtype=torch.float32))
        self.body = mlp(observation_size, self.n_outputs, hidden)
        last = self.body[-1]
        assert isinstance(last, nn.Linear)
        with torch.no_grad():
            last.weight.mul_(LAST_LAYER_SCALE)
        self.log_std = nn.Parameter(torch.full((self.n_gaussian,), INITIAL_LOG_STD))
        self._numpy_forward = NumpyForward(self.body)
        self._head_dims = {
            head: np.array([g for g, h in enumerate(gaussian_head) if h == head], dtype=np.int64)
            for head in set(gaussian_head)
        }
        """Gaussian dimensions (indices into μ, σ, centre, half-width) of each Box head."""
        self._mean_numpy = np.asarray(mean_column, dtype=np.int64)
        self._centre = np.asarray(centre, dtype=np.float32)
        self._half_width = np.asarray(half_width, dtype=np.float32)

    @property
    def n_heads(self) -> int:
        return len(self.heads)

    def forward(self, observations: Tensor) -> Tensor:
        """Distribution parameters (B, P): network outputs, then σ on every row."""
        outputs = self.body(observations)
        if not self.n_gaussian:
            return outputs
        return torch.cat([outputs, self.log_std.expand(outputs.shape[0], -1)], dim=-1)

    def _gaussian(self, parameters: Tensor) -> tuple[Tensor, Tensor]:
        """(μ, σ), each (B, G), from :meth:`forward`'s output."""
        return parameters[:, self._mean_column], parameters[:, self.n_outputs :]

    def _per_head(self, per_component: list[tuple[int, Tensor]], like: Tensor) -> Tensor:
        """Sum (head, (B,)) terms into (n_heads, B)."""
        totals: list[Tensor] = [like.new_zeros(like.shape[0]) for _ in self.heads]
        for head, term in per_component:
            totals[head] = totals[head] + term
        return torch.stack(totals)

    def _gaussian_terms(self, values: Tensor) -> list[tuple[int, Tensor]]:
        """(head, (B,)) sums of the per-dimension ``values`` (B, G) over each head's dims."""
        terms, start = [], 0
        while start < self.n_gaussian:
            head = self.gaussian_heads[start]
            stop = start
            while stop < self.n_gaussian and self.gaussian_heads[stop] == head:
                stop += 1
            terms.append((head, values[:, start:stop].sum(dim=-1)))
            start = stop
        return terms

    def log_prob_from_logits(self, parameters: Tensor, actions: Tensor) -> Tensor:
        """log π(a^n|o) per head, (n_heads, B); Gaussian heads: the density of the unclipped a."""
        terms = []
        for head, column, first, choices in self.categorical:
            log_probs = torch.log_softmax(parameters[:, first : first + choices], dim=-1)
            index = actions[:, column : column + 1].long()
            terms.append((head, log_probs.gather(-1, index).squeeze(-1)))
        if self.n_gaussian:
            mean, log_std = self._gaussian(parameters)
            value = actions[:, self._gaussian_column].to(parameters.dtype)
            u = (value - self.centre) / self.half_width
            log_density = (
                -0.5 * ((u - mean) * torch.exp(-log_std)) ** 2
                - log_std - torch.log(self.half_width) - 0.5 * LOG_2PI
            )
            terms.extend(self._gaussian_terms(log_density))
        return self._per_head(terms, parameters)

    def log_prob(self, observations: Tensor, actions: Tensor) -> Tensor:
        return self.log_prob_from_logits(self(observations), actions)

    def kl_from_logits(self, old_parameters: Tensor, parameters: Tensor) -> Tensor:
        """Mean over samples of KL(π_old(·|o) ‖ π(·|o)), summed over heads and components.

        Gaussian dimension: σ − σ_old + (exp(2σ_old) + (μ_old − μ)²)/(2 exp(2σ)) − ½.
        """
        old_parameters = old_parameters.detach()
        total = parameters.new_zeros(())
        for _, _, first, choices in self.categorical:
            old = torch.log_softmax(old_parameters[:, first : first + choices], dim=-1)
            new = torch.log_softmax(parameters[:, first : first + choices], dim=-1)
            total = total + (old.exp() * (old - new)).sum(dim=-1).mean()
        if self.n_gaussian:
            old_mean, old_log_std = self._gaussian(old_parameters)
            mean, log_std = self._gaussian(parameters)
            kl = (
                log_std - old_log_std
                + (torch.exp(2 * old_log_std) + (old_mean - mean) ** 2)
                / (2 * torch.exp(2 * log_std))
                - 0.5
            )
            total = total + kl.sum(dim=-1).mean()
        return total

    def kl(self, observations: Tensor, old_parameters: Tensor) -> Tensor:
        return self.kl_from_logits(old_parameters, self(observations))

    def logit_fisher_product(self, parameters: Tensor, tangent: Tensor) -> Tensor:
        """F·t per row, the Hessian of the KL in the distribution parameters at π_old = π:
        (diag p − p pᵀ)·t per categorical, exp(−2σ)·t for a mean μ, 2·t for a log-std σ."""
        product = torch.empty_like(tangent)
        for _, _, first, choices in self.categorical:
            part = slice(first, first + choices)
            probabilities = torch.softmax(parameters[:, part], dim=-1)
            mixed = probabilities * tangent[:, part]
            product[:, part] = mixed - probabilities * mixed.sum(dim=-1, keepdim=True)
        if self.n_gaussian:
            _, log_std = self._gaussian(parameters)
            product[:, self._mean_column] = tangent[:, self._mean_column] * torch.exp(-2 * log_std)
            product[:, self.n_outputs :] = 2.0 * tangent[:, self.n_outputs :]
        return product

    def entropy_from_logits(self, parameters: Tensor) -> Tensor:
        """Entropy per head, (n_heads, B) (Gaussian: of a, including log h)."""
        terms = []
        for head, _, first, choices in self.categorical:
            log_probs = torch.log_softmax(parameters[:, first : first + choices], dim=-1)
            terms.append((head, -(log_probs.exp() * log_probs).sum(dim=-1)))
        if self.n_gaussian:
            _, log_std = self._gaussian(parameters)
            terms.extend(self._gaussian_terms(
                0.5 + 0.5 * LOG_2PI + log_std + torch.log(self.half_width)
            ))
        return self._per_head(terms, parameters)

    def entropy(self, observations: Tensor) -> Tensor:
        return self.entropy_from_logits(self(observations))

    def sample(
        self,
        observations: np.ndarray,
        head: int,
        rng: np.random.Generator,
        deterministic: bool = False,
    ) -> np.ndarray:
        """Draw head ``head``'s action in numpy, (K, width): int64 for a discrete head (Gumbel-max
        per component, as :func:`sample_actions`), float32 for a Box (c + h·(μ + exp(σ)·ε),
        unclipped). ``deterministic`` takes the mode (argmax, or the mean c + h·μ)."""
        outputs = self._numpy_forward(np.ascontiguousarray(observations, dtype=np.float32))
        space = self.heads[head]
        if space.is_box:
            dims = self._head_dims[head]
            mean = outputs[:, self._mean_numpy[dims]]
            if not deterministic:
                std = np.exp(self.log_std.detach().numpy()[dims])
                mean = mean + std * rng.standard_normal(size=mean.shape)
            values = self._centre[dims] + self._half_width[dims] * mean
            return values.astype(np.float32)
        columns = []
        for component_head, _, first, choices in self.categorical:
            if component_head != head:
                continue
            logits = outputs[:, first : first + choices]
            if not deterministic:
                logits = logits + rng.gumbel(size=logits.shape)
            columns.append(logits.argmax(axis=-1))
        return np.stack(columns, axis=1).astype(np.int64)


Policy = CategoricalPolicy | ProductPolicy


def make_policy(
    observation_size: int, heads: Sequence[ActionSpace], hidden: Sequence[int] = (128, 128)
) -> Policy:
    """A :class:`CategoricalPolicy` when every head is ``Discrete(n)`` (the built-in envs, with
    exactly the parameters and numbers as before), a :class:`ProductPolicy` otherwise."""
    if all(not space.is_box and space.width == 1 for space in heads):
        return CategoricalPolicy(observation_size, [space.nvec[0] for space in heads], hidden)
    return ProductPolicy(observation_size, heads, hidden)


def draws_once_per_call(policy: Policy, head: int) -> bool:
    """Whether :func:`sample_head` for ``head`` makes a single generator call (Gumbel noise
    for one categorical, or normal noise for one Box), whose numbers fill the rows in order."""
    if isinstance(policy, CategoricalPolicy):
        return True
    space = policy.heads[head]
    return space.is_box or sum(1 for c in policy.categorical if c[0] == head) == 1


def sample_head(
    policy: Policy,
    observations: np.ndarray,
    head: int,
    rng: np.random.Generator,
    deterministic: bool = False,
) -> np.ndarray:
    """One head's actions: (K,) when the head's action is one number (int64 for Discrete,
    :func:`sample_actions`), else (K, width) (:meth:`ProductPolicy.sample`)."""
    if isinstance(policy, CategoricalPolicy):
        return sample_actions(policy, observations, head, rng, deterministic)
    draws = policy.sample(observations, head, rng, deterministic)
    return draws[:, 0] if draws.shape[1] == 1 else draws


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
