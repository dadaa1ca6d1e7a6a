"""MPE particle physics over K copies at once: action forces, soft contacts, damped integration.

Every function works on arrays whose leading axis is the copy (``R`` rows of the K copies) and
reproduces mpe2's ``core.World.step`` operation by operation (same formulas, same order of the
floating-point operations), so a batched step equals K mpe2 steps to rounding (see
tests/test_particles.py):

1. force on a movable agent = its action ``u`` (discrete move times its ``accel``, 5 by default)
   plus the contact force of every other colliding entity, added in entity order;
2. ``p ← p + v·dt``; ``v ← v·(1 − damping)``; ``v ← v + (F / m)·dt``; speeds above ``max_speed``
   are scaled back to it.

Contact force between colliders a and b (mpe2's soft penetration, margin k): with
``δ = p_a − p_b``, ``d = |δ|``, ``pen = k·log(1 + exp(−(d − s_a − s_b)/k))``, entity a gets
``c·δ/d·pen`` and b the opposite.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

MOVES = np.array([[0.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [0.0, -1.0], [0.0, 1.0]])
"""Unit move of each discrete action: no-op, left, right, down, up (mpe2 ``_set_action``)."""
DEFAULT_SENSITIVITY = 5.0
"""mpe2's action scale for an agent without its own ``accel``."""


@dataclass(frozen=True)
class PhysicsConstants:
    """mpe2 ``core.World`` constants (the same for every MPE family)."""

    dt: float = 0.1
    """Integration time step."""
    damping: float = 0.25
    """Fraction of the velocity lost per step."""
    contact_force: float = 1e2
    """Stiffness ``c`` of the soft contact."""
    contact_margin: float = 1e-3
    """Softness ``k`` of the contact's penetration."""


@dataclass(frozen=True)
class Bodies:
    """Static properties of the N agents (entities ``0..N-1``, the only movable ones)."""

    sizes: np.ndarray
    """(E,) radius of every entity, agents first then landmarks."""
    accel: np.ndarray
    """(N,) action scale of each agent."""
    mass: np.ndarray
    """(N,) mass of each agent."""
    max_speed: np.ndarray
    """(N,) speed limit of each agent (``inf``: none)."""
    n_colliders: int
    """Entities ``0..C-1`` take part in contacts (mpe2 ``collide=True``): the agents, then the
    colliding landmarks; in every MPE family here the colliders come first."""

    @property
    def n_agents(self) -> int:
        return len(self.accel)

    @cached_property
    def contact_distance(self) -> np.ndarray:
        """(C, C) ``s_a + s_b``: the distance below which two colliders touch."""
        sizes = self.sizes[: self.n_colliders]
        return sizes[:, None] + sizes[None, :]

    @cached_property
    def identity(self) -> np.ndarray:
        """(C, C) identity matrix of the colliders."""
        return np.eye(self.n_colliders)

    @cached_property
    def action_table(self) -> np.ndarray:
        """(N, 5, 2) ``MOVES · accel`` of each agent: the force of each discrete action."""
        return MOVES[None, :, :] * self.accel[:, None, None]

    @cached_property
    def unit_mass(self) -> bool:
        """Every agent has mass 1 (then ``F / m`` is ``F`` exactly and is skipped)."""
        return bool((self.mass == 1.0).all())

    @cached_property
    def speed_limited(self) -> bool:
        return bool(np.isfinite(self.max_speed).any())


def action_forces(actions: np.ndarray, bodies: Bodies) -> np.ndarray:
    """``u = MOVES[a]·accel``: (R, N) discrete actions -> (R, N, 2) forces."""
    return bodies.action_table[np.arange(bodies.n_agents), actions]


def measure(positions: np.ndarray, delta: np.ndarray, distance: np.ndarray) -> None:
    """Collider geometry of (R, C, 2) positions into ``delta`` (R, C, C, 2) and ``distance``
    (R, C, C): ``delta[r, j, e] = p_e - p_j`` and ``distance = |delta|`` (computed as mpe2 does).

    One measurement per step serves the rewards, the observations and the next step's contact
    forces (the positions do not change in between).
    """
    np.subtract(positions[:, None, :, :], positions[:, :, None, :], out=delta)
    square = delta * delta
    np.add(square[..., 0], square[..., 1], out=distance)
    np.sqrt(distance, out=distance)


def contact_forces(
    delta: np.ndarray, distance: np.ndarray, bodies: Bodies, constants: PhysicsConstants
) -> np.ndarray:
    """``F[r, j, e]``, the contact force on collider e from collider j, from :func:`measure`'s
    geometry: (R, C, C, 2); the diagonal (an entity and itself) is exactly 0.

    mpe2 gives a in pair (a, b) ``+c·(p_a - p_b)/d·pen`` and b the negation of the same, which
    equals ``c·(p_b - p_a)/d·pen`` exactly: so ``F[r, j, e] = c·delta[r, j, e]/d·pen``.
    """
    k = constants.contact_margin
    # mpe2's -(d - d_min) / k, written (d_min - d) / k: the same number, one operation less
    penetration = np.logaddexp(0, (bodies.contact_distance - distance) / k)
    penetration *= k
    divisor = distance + bodies.identity  # self pairs: 0/1 instead of 0/0; delta is 0 there
    force = constants.contact_force * delta
    force /= divisor[..., None]
    force *= penetration[..., None]
    return force


def total_forces(
    actions: np.ndarray,
    delta: np.ndarray | None,
    distance: np.ndarray | None,
    bodies: Bodies,
    constants: PhysicsConstants,
) -> np.ndarray:
    """Action plus contact forces on each agent, (R, N, 2), summed in mpe2's entity order.

    ``delta`` and ``distance`` are the colliders' current geometry (:func:`measure`), None
    without colliders.
    """
    force = action_forces(actions, bodies)
    if delta is None or distance is None:
        return force
    pairwise = contact_forces(delta, distance, bodies, constants)
    m = min(bodies.n_colliders, bodies.n_agents)  # the colliding agents
    # mpe2 adds u first, then each partner's force in increasing entity order; a sum over a
    # non-innermost axis adds the terms one after the other in that order
    terms = np.concatenate([force[:, None, :m], pairwise[:, :, :m]], axis=1)
    force[:, :m] = terms.sum(axis=1)
    return force


def integrate(
    positions: np.ndarray,
    velocities: np.ndarray,
    force: np.ndarray,
    bodies: Bodies,
    constants: PhysicsConstants,
) -> None:
    """mpe2 ``integrate_state`` for the agents, in place on (R, N, 2) views of the state."""
    positions += velocities * constants.dt
    velocities *= 1 - constants.damping
    if not bodies.unit_mass:
        force = force / bodies.mass[:, None]
    force *= constants.dt
    velocities += force
    if bodies.speed_limited:
        speed = np.sqrt(np.square(velocities[..., 0]) + np.square(velocities[..., 1]))
        over = speed > bodies.max_speed
        if over.any():
            rows, agents = np.nonzero(over)
            scaled = velocities[rows, agents] / speed[rows, agents, None]
            velocities[rows, agents] = scaled * bodies.max_speed[agents, None]


def pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``d[r, i, j] = |a[r, i] - b[r, j]|`` for (R, n, 2) and (R, m, 2) -> (R, n, m), as mpe2."""
    delta = a[:, :, None, :] - b[:, None, :, :]
    square = delta * delta
    return np.sqrt(square[..., 0] + square[..., 1])


def touching(a: np.ndarray, size_a: np.ndarray, b: np.ndarray, size_b: np.ndarray) -> np.ndarray:
    """mpe2's ``is_collision`` (strict ``d < s_a + s_b``) for every pair: (R, n, m) bools."""
    return pairwise_distances(a, b) < size_a[:, None] + size_b[None, :]
