"""Tabular peer personas of Meta-MAPG (appendix E): the population p(φ^{-i}_0) and its splits.

IPD (E.1): 480 personas, half cooperating (P(C|s) ~ U[0.5, 1] independently per state), half
defecting (P(C|s) ~ U[0, 0.5]), shuffled and split 400/40/40 into meta-train/validation/test.
The out-of-distribution split (Figure 3c) is built from the same 480 here: the 40 personas
whose mean |P(C|s) − 0.5| is smallest (closest to indifferent) are the meta-test set, the rest
are split 400/40 — so the test personas overlap the training ones less; the paper does not say
how it built its split. RPS (E.2): 720 personas, 240 each of rock, paper, scissors; a rock
persona has P(R|s) ~ U[1/3, 1] per state, the rest split at random between P and S, redrawn
until P(R|s) is the largest; split 600/60/60.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SPLITS = ("train", "val", "test")
DISTRIBUTIONS = ("in", "out")


@dataclass(frozen=True)
class PersonaSet:
    """Action probabilities of every persona, float64 (n, S, A), per split."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def split(self, name: str) -> np.ndarray:
        if name not in SPLITS:
            raise ValueError(f"unknown persona split {name!r}; valid: {', '.join(SPLITS)}")
        return getattr(self, name)

    def to_dict(self) -> dict[str, list]:
        return {name: self.split(name).round(6).tolist() for name in SPLITS}


def ipd_population(rng: np.random.Generator, n: int = 480, n_states: int = 5) -> np.ndarray:
    """n/2 cooperating then n/2 defecting personas, (n, S, 2) with [:, :, 0] = P(C|s)."""
    half = n // 2
    cooperate = np.concatenate(
        [rng.uniform(0.5, 1.0, (half, n_states)), rng.uniform(0.0, 0.5, (n - half, n_states))]
    )
    return np.stack([cooperate, 1.0 - cooperate], axis=2)


def rps_population(rng: np.random.Generator, n: int = 720, n_states: int = 10) -> np.ndarray:
    """n/3 rock, paper and scissors personas each, (n, S, 3)."""
    personas = np.zeros((n, n_states, 3))
    for index in range(n):
        favourite = index * 3 // n
        for state in range(n_states):
            personas[index, state] = _favouring(rng, favourite)
    return personas


def _favouring(rng: np.random.Generator, favourite: int) -> np.ndarray:
    while True:
        top = rng.uniform(1.0 / 3.0, 1.0)
        share = rng.uniform()
        others = np.array([share, 1.0 - share]) * (1.0 - top)
        if others.max() < top:
            probabilities = np.insert(others, favourite, top)
            return probabilities


def make_personas(game: str, seed: int, distribution: str = "in") -> PersonaSet:
    """The seeded population of ``game`` and its meta-train/val/test split (appendix E)."""
    if distribution not in DISTRIBUTIONS:
        raise ValueError(
            f"persona distribution must be 'in' or 'out', got {distribution!r}"
        )
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x9E75]))
    if game == "ipd":
        population, sizes = ipd_population(rng), (400, 40, 40)
    elif game == "rps":
        if distribution == "out":
            raise ValueError("the out-of-distribution split exists for ipd only (Figure 3c)")
        population, sizes = rps_population(rng), (600, 60, 60)
    else:
        raise ValueError(f"personas exist for ipd and rps, not {game!r}")
    if distribution == "out":
        moderation = np.abs(population[:, :, 0] - 0.5).mean(axis=1)
        order = np.argsort(moderation, kind="stable")
        test, rest = order[: sizes[2]], rng.permutation(order[sizes[2]:])
        return PersonaSet(population[rest[: sizes[0]]], population[rest[sizes[0]:]],
                          population[test])
    order = rng.permutation(len(population))
    first, second = sizes[0], sizes[0] + sizes[1]
    return PersonaSet(population[order[:first]], population[order[first:second]],
                      population[order[second:]])


def persona_index(seed: int, iteration: int, n: int) -> int:
    """The persona the peer plays at ``iteration``: drawn from (seed, iteration) alone."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, iteration, 0x9E76]))
    return int(rng.integers(n))


def test_order(seed: int, n: int) -> np.ndarray:
    """The order in which a meta-test run plays its n test personas: a seeded permutation, so
    that n chains play every test persona exactly once (Algorithm 2 loops over the meta-test
    set) and any first m chains are a uniform sample without replacement."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x9E77]))
    return rng.permutation(n)
