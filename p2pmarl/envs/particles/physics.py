"""MPE particle physics over K copies at once: action forces, soft contacts, damped integration.

Layout: **copies last.** Every state array ends with the copy axis (``R`` rows of the K copies):
positions ``(E, 2, R)``, agent velocities and forces ``(N, 2, R)``, the geometry ``(N, E, 2, R)``.
Each numpy operation then runs one contiguous inner loop over the copies instead of hundreds of
loops over 2 or 3 numbers (issue 15: the agents' relative positions ``(N, E, 2)`` of 100 copies
took 74 µs copies first, 10 µs copies last).

Every function reproduces mpe2's ``core.World.step`` operation by operation (same formulas, same
order of the floating-point operations), so a batched step equals K mpe2 steps bit for bit (see
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
    def agent_contact_distance(self) -> np.ndarray:
        """(N, C, 1) ``s_i + s_j`` of agent i and collider j, broadcast over the copies."""
        return self.contact_distance[: self.n_agents, :, None]

    @cached_property
    def agent_identity(self) -> np.ndarray:
        """(N, C, 1): 1 where collider j is agent i itself, else 0."""
        return np.eye(self.n_agents, self.n_colliders)[:, :, None]

    @cached_property
    def action_table(self) -> np.ndarray:
        """(N, 5, 2) ``MOVES · accel`` of each agent: the force of each discrete action."""
        return MOVES[None, :, :] * self.accel[:, None, None]

    @cached_property
    def action_lookup(self) -> tuple[np.ndarray, np.ndarray]:
        """:attr:`action_table` flat as ``[n, axis, action]`` and the (N, 2, 1) start of each
        ``[n, axis]`` run in it: ``u[n, axis, r] = flat[start[n, axis] + a[r, n]]``."""
        table = self.action_table.transpose(0, 2, 1)
        start = np.arange(table.size).reshape(table.shape)[:, :, :1]
        return np.ascontiguousarray(table).ravel(), start

    @cached_property
    def unit_mass(self) -> bool:
        """Every agent has mass 1 (then ``F / m`` is ``F`` exactly and is skipped)."""
        return bool((self.mass == 1.0).all())

    @cached_property
    def speed_limited(self) -> bool:
        return bool(np.isfinite(self.max_speed).any())


class Workspace:
    """Views and scratch buffers of one block of R copies for a physics step, sliced once
    (issue 15: at K = 10 the step is a few dozen numpy calls, so every slice counts).

    ``positions`` and ``velocities`` are (E, 2, R) views of the world state, ``relative``
    (N, E, 2, R) and ``distance`` (N, E, R) views of its geometry (:func:`measure`).
    """

    def __init__(
        self,
        positions: np.ndarray,
        velocities: np.ndarray,
        relative: np.ndarray,
        distance: np.ndarray,
        bodies: Bodies,
    ) -> None:
        n, c, r = bodies.n_agents, bodies.n_colliders, positions.shape[-1]
        self.positions = positions
        self.agent_positions = positions[:n]
        self.agent_velocities = velocities[:n]
        self.entities = positions[None]
        self.observers = positions[:n, None]
        self.relative = relative
        self.square = np.zeros_like(relative)
        self.square_x, self.square_y = self.square[:, :, 0], self.square[:, :, 1]
        self.distance = distance
        self.colliding = c >= 2
        """Whether contacts are computed (mpe2 needs two colliders for a pair)."""
        self.collider_relative = relative[:, :c]
        self.collider_distance = distance[:, :c]
        self.terms = np.zeros((n, 1 + c, 2, r))
        """``[u, G_0, G_1, ...]`` of each agent: the terms of :func:`total_forces`."""
        self.action = self.terms[:, 0]
        self.contact = self.terms[:, 1:]
        self.force = np.zeros((n, 2, r))
        self.penetration = np.zeros((n, c, r))
        self.divisor = np.zeros((n, c, r))
        self.motion = np.zeros((n, 2, r))


def action_forces(actions: np.ndarray, bodies: Bodies, out: np.ndarray) -> None:
    """``u = MOVES[a]·accel`` of (R, N) valid discrete actions, written into ``out`` (N, 2, R)."""
    flat, start = bodies.action_lookup
    flat.take(start + actions.T[:, None, :], out=out, mode="clip")  # valid: never clipped


def measure(space: Workspace) -> None:
    """Geometry seen by the agents: ``relative[i, e] = p_e - p_i`` (N, E, 2, R) for every agent
    i and entity e, and ``distance = |relative|`` (N, E, R) (computed as mpe2 does:
    ``sqrt(dx² + dy²)``).

    One measurement per step serves the rewards, the observations and the next step's contact
    forces (the positions do not change in between).
    """
    np.subtract(space.entities, space.observers, out=space.relative)
    np.multiply(space.relative, space.relative, out=space.square)
    np.add(space.square_x, space.square_y, out=space.distance)
    np.sqrt(space.distance, out=space.distance)


def contact_forces(space: Workspace, bodies: Bodies, constants: PhysicsConstants) -> None:
    """``G[i, j] = c·(p_j - p_i)/d·pen`` (N, C, 2, R) into ``space.contact`` from
    :func:`measure`'s geometry: the contact force on agent i from collider j is ``-G[i, j]``
    exactly, and ``G[i, i] = 0``.

    mpe2 gives a in pair (a, b) ``+c·(p_a - p_b)/d·pen`` and b the negation of the same; both
    are ``-G`` bit for bit (negation commutes with rounding), so :func:`total_forces` subtracts.
    """
    k = constants.contact_margin
    penetration, out = space.penetration, space.contact
    # mpe2's -(d - d_min) / k, written (d_min - d) / k: the same number, one operation less
    np.subtract(bodies.agent_contact_distance, space.collider_distance, out=penetration)
    penetration /= k
    np.logaddexp(0.0, penetration, out=penetration)
    penetration *= k
    # self pairs: 0/1 instead of 0/0 (relative is 0 there)
    np.add(space.collider_distance, bodies.agent_identity, out=space.divisor)
    np.multiply(space.collider_relative, constants.contact_force, out=out)
    out /= space.divisor[:, :, None]
    out *= penetration[:, :, None]


def total_forces(
    actions: np.ndarray, space: Workspace, bodies: Bodies, constants: PhysicsConstants
) -> None:
    """Action plus contact forces on each agent into ``space.force`` (N, 2, R), summed in
    mpe2's entity order, from (R, N) valid actions and the current geometry (:func:`measure`)."""
    if not space.colliding:
        action_forces(actions, bodies, space.force)
        return
    action_forces(actions, bodies, space.action)
    contact_forces(space, bodies, constants)
    # mpe2 adds u first, then each partner's force in increasing entity order; a reduction over
    # a non-innermost axis applies the terms one after the other in that order:
    # ((u - G_0) - G_1) - ... = ((u + F_0) + F_1) + ... bit for bit
    np.subtract.reduce(space.terms, axis=1, out=space.force)


def integrate(space: Workspace, bodies: Bodies, constants: PhysicsConstants) -> None:
    """mpe2 ``integrate_state`` for the agents, in place on the state with ``space.force``
    (consumed)."""
    positions, velocities, force = space.agent_positions, space.agent_velocities, space.force
    np.multiply(velocities, constants.dt, out=space.motion)
    positions += space.motion
    velocities *= 1 - constants.damping
    if not bodies.unit_mass:
        force /= bodies.mass[:, None, None]
    force *= constants.dt
    velocities += force
    if bodies.speed_limited:
        limit_speed(velocities, bodies.max_speed)


def limit_speed(velocities: np.ndarray, max_speed: np.ndarray) -> None:
    """mpe2's speed clamp on (N, 2, R) velocities: ``v / |v| · max_speed`` where too fast."""
    speed = np.sqrt(np.square(velocities[:, 0]) + np.square(velocities[:, 1]))
    over = speed > max_speed[:, None]
    if over.any():
        agents, rows = np.nonzero(over)
        scaled = velocities[agents, :, rows] / speed[agents, rows, None]
        velocities[agents, :, rows] = scaled * max_speed[agents, None]


def pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``d[r, i, j] = |a[r, i] - b[r, j]|`` for (R, n, 2) and (R, m, 2) -> (R, n, m), as mpe2."""
    delta = a[:, :, None, :] - b[:, None, :, :]
    square = delta * delta
    return np.sqrt(square[..., 0] + square[..., 1])


def touching(a: np.ndarray, size_a: np.ndarray, b: np.ndarray, size_b: np.ndarray) -> np.ndarray:
    """mpe2's ``is_collision`` (strict ``d < s_a + s_b``) for every pair: (R, n, m) bools."""
    return pairwise_distances(a, b) < size_a[:, None] + size_b[None, :]
