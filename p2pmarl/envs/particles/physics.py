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
    colliders: np.ndarray
    """Indices of the entities that take part in contacts (``collide=True``), increasing."""

    @property
    def n_agents(self) -> int:
        return len(self.accel)


def action_forces(actions: np.ndarray, accel: np.ndarray) -> np.ndarray:
    """``u = MOVES[a]·accel``: (R, N) discrete actions -> (R, N, 2) forces."""
    return MOVES[actions] * accel[None, :, None]


def contact_forces(
    positions: np.ndarray, sizes: np.ndarray, constants: PhysicsConstants
) -> np.ndarray:
    """Contact forces ``F[r, a, b]`` on collider a from collider b: (R, C, 2) -> (R, C, C, 2).

    The diagonal (an entity and itself) is exactly 0.
    """
    delta = positions[:, :, None, :] - positions[:, None, :, :]
    square = delta * delta
    distance = np.sqrt(square[..., 0] + square[..., 1])
    minimum = sizes[:, None] + sizes[None, :]
    k = constants.contact_margin
    penetration = np.logaddexp(0, -(distance - minimum) / k) * k
    n = positions.shape[1]
    np.einsum("rii->ri", distance)[...] = 1.0  # self pairs: avoid 0/0, zeroed below
    force = constants.contact_force * delta / distance[..., None] * penetration[..., None]
    force[:, np.arange(n), np.arange(n)] = 0.0
    return force


def total_forces(
    positions: np.ndarray, actions: np.ndarray, bodies: Bodies, constants: PhysicsConstants
) -> np.ndarray:
    """Action plus contact forces on each agent, (R, N, 2), summed in mpe2's entity order."""
    force = action_forces(actions, bodies.accel)
    colliders = bodies.colliders
    if len(colliders) < 2:
        return force
    pairwise = contact_forces(positions[:, colliders], bodies.sizes[colliders], constants)
    agent_rows = np.flatnonzero(colliders < bodies.n_agents)
    agents = colliders[agent_rows]
    # mpe2 adds u first, then each partner's force in increasing entity order
    terms = np.concatenate([force[:, agents, None, :], pairwise[:, agent_rows]], axis=2)
    accumulated = np.cumsum(terms, axis=2)[:, :, -1, :]
    force[:, agents] = accumulated
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
    velocities += (force / bodies.mass[None, :, None]) * constants.dt
    if np.isfinite(bodies.max_speed).any():
        speed = np.sqrt(np.square(velocities[..., 0]) + np.square(velocities[..., 1]))
        over = speed > bodies.max_speed[None, :]
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
