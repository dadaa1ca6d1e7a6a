"""A token handed along an update order, relayed hop by hop between graph neighbours.

The sequential schemes of HATRPO/HAPPO (Kuba et al., Algorithm 1: "draw a random permutation of
agents i_1:n; for m = 1..n update π^{i_m}") need no coordinator:

* **Order** (:func:`update_order`): every agent derives the same permutation i_1..i_N for
  iteration k from the run seed and k, with no message. ``random`` is the paper's uniform
  permutation; ``ring`` (only on a ring or a path) is a random start and direction along the
  graph, so every hand-over is one hop.
* **Token**: agent i_m, after its update, sends what the next agent needs (for HAPPO: the running
  sum of log ratios, one float32 per sample) to i_{m+1}. When i_{m+1} is not a graph neighbour
  the token travels hop by hop along a shortest path of graph neighbours
  (:func:`shortest_path`); relays forward it unchanged. A token names its iteration, its
  ``position`` (the index m of its destination in the order) and the batch ``fingerprint``; the
  destination checks all three (:func:`validate_token`) and never uses a token that does not
  match.
* **Reliability**: every hop is a one-way reliable message of the runtime (``Peers.deliver``,
  exchange (position, hops)): the next hop's link acknowledges it on arrival (``TOKEN_ACK``,
  only the reliability fields), a copy lost on the way is retransmitted on the estimated
  timeout, and duplicates are suppressed, so a dropped copy costs one timeout, not a
  ``token_lost``.
* **Faults** (:class:`TokenRelay`): agent i_m waits for its token at most ``m·hand_over_timeout``
  seconds after it entered the phase; then it records ``token_lost``, updates with what it has (an
  empty sum: factor 1) and the order goes on. A neighbour the network layer reports lost
  (``Peers.down``) is skipped as a destination and avoided as a relay, and the token carries the
  ids of the agents its handlers believe lost, so that agents far from a crash learn of it and
  route around it in later hand-overs (:meth:`TokenRelay.refresh_lost`). An agent stays in the
  phase until its own token has left and every hand-over whose route runs through it has passed
  (or is past its deadline), so one phase lasts at most ``N·hand_over_timeout`` plus the agent's
  update.

Nothing here knows what the token's payload means; the variant supplies the update.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from p2pmarl.algos.base import PeerMessage, Peers
from p2pmarl.runtime.reliable import ack_kind

logger = logging.getLogger(__name__)

TOKEN = "token"
"""Message kind of a token."""
TOKEN_ACK = ack_kind(TOKEN)
"""Kind of the empty acknowledgement of one hop of a token (``Peers.deliver``)."""
TOKEN_FIELDS = frozenset(
    {"log_ratio_sum", "iteration", "position", "fingerprint", "hops", "lost"}
)
"""The whole content of a token: the payload, its iteration, the position of its destination in
the order, the batch fingerprint, how many links it has crossed so far and the ids of the agents
its handlers believe lost (routing metadata, see :meth:`TokenRelay.refresh_lost`)."""
ORDER_MODES = ("random", "ring")
"""``--happo-order`` values."""
LIVENESS_POLL_SECONDS = 0.2
"""Longest single blocking receive of a token wait: between two, ``Peers.down`` is read."""
ORDER_STREAM = 0x70C3
"""Constant mixed into the order's seed so that it never shares a stream with other seeded
draws of the run (e.g. MATRPO's edge sequence uses [seed, iteration])."""

Edge = tuple[int, int]


class TokenError(ValueError):
    """A token that does not belong to this agent's iteration, position or batch."""


# -- the order --------------------------------------------------------------------------------


def adjacency(n_agents: int, edges: Iterable[Sequence[int]]) -> dict[int, tuple[int, ...]]:
    """Agent → sorted neighbours, for agents 0..n_agents−1."""
    neighbours: dict[int, set[int]] = {agent: set() for agent in range(n_agents)}
    for i, j in edges:
        if i == j or not (0 <= i < n_agents and 0 <= j < n_agents):
            raise ValueError(f"edge ({i}, {j}) is not an edge between agents 0..{n_agents - 1}")
        neighbours[i].add(j)
        neighbours[j].add(i)
    return {agent: tuple(sorted(others)) for agent, others in neighbours.items()}


def ring_sequence(n_agents: int, edges: Iterable[Sequence[int]]) -> tuple[tuple[int, ...], bool]:
    """The agents in the order they lie along a ring (cycle) or a path, and whether it is a ring.

    A ring starts at agent 0 towards its lower neighbour; a path starts at its lower end. Raises
    ValueError naming the problem for any other graph (the ``ring`` order needs one).
    """
    graph = adjacency(n_agents, edges)
    degrees = sorted(len(others) for others in graph.values())
    n_edges = sum(degrees) // 2
    is_ring = n_agents >= 3 and degrees == [2] * n_agents
    is_path = n_agents >= 2 and degrees == [1, 1] + [2] * (n_agents - 2)
    if n_agents == 1:
        return (0,), False
    if not (is_ring or is_path):
        raise ValueError(
            f"the 'ring' update order needs a ring or a path; this graph has {n_agents} agents, "
            f"{n_edges} edges and degrees {degrees}. Use --happo-order random (tokens are then "
            f"relayed along shortest paths)"
        )
    start = 0 if is_ring else min(a for a, others in graph.items() if len(others) == 1)
    sequence, previous = [start], None
    while len(sequence) < n_agents:
        here = sequence[-1]
        following = [a for a in graph[here] if a != previous]
        if not following or following[0] == start:
            break
        previous = here
        sequence.append(following[0])
    if len(sequence) != n_agents:
        raise ValueError(
            f"the 'ring' update order needs a connected ring or path; walking the graph from "
            f"agent {start} reached only {sequence}. Use --happo-order random"
        )
    return tuple(sequence), is_ring


def update_order(
    mode: str, n_agents: int, edges: Iterable[Sequence[int]], seed: int, iteration: int
) -> tuple[int, ...]:
    """The permutation i_1..i_N of iteration ``iteration``, identical at every agent.

    ``random``: uniform over all N! permutations (HATRPO/HAPPO Algorithm 1). ``ring``: a uniform
    start along the ring and a uniform direction (on a path: a uniform choice of end), so
    consecutive agents are neighbours. Drawn from numpy's PCG64 seeded with (seed, iteration).
    """
    if mode not in ORDER_MODES:
        raise ValueError(f"update order {mode!r} is unknown; use one of {', '.join(ORDER_MODES)}")
    generator = np.random.Generator(np.random.PCG64([ORDER_STREAM, seed, iteration]))
    if mode == "random":
        return tuple(int(agent) for agent in generator.permutation(n_agents))
    sequence, is_ring = ring_sequence(n_agents, edges)
    start = int(generator.integers(0, n_agents)) if is_ring else 0
    rotated = sequence[start:] + sequence[:start]
    if generator.integers(0, 2) == 1:
        rotated = (rotated[0], *reversed(rotated[1:])) if is_ring else tuple(reversed(rotated))
    return rotated


def shortest_path(
    graph: Mapping[int, Sequence[int]], source: int, target: int, avoid: Iterable[int] = ()
) -> list[int] | None:
    """A shortest path source → target through graph neighbours, avoiding agents in ``avoid``.

    Breadth-first search visiting neighbours in ascending id, so every agent computes the same
    path. None when no path exists.
    """
    blocked = set(avoid) - {source, target}
    parents: dict[int, int | None] = {source: None}
    frontier = deque([source])
    while frontier:
        here = frontier.popleft()
        if here == target:
            path = [here]
            while (parent := parents[path[-1]]) is not None:
                path.append(parent)
            return path[::-1]
        for neighbour in graph[here]:
            if neighbour not in parents and neighbour not in blocked:
                parents[neighbour] = here
                frontier.append(neighbour)
    return None


# -- the token --------------------------------------------------------------------------------


def validate_token(
    message: PeerMessage, iteration: int, position: int, fingerprint: str, n_samples: int
) -> np.ndarray:
    """The token's running sum, float32 (n_samples,), or :class:`TokenError` naming the mismatch.

    A token of another iteration, position or batch is never combined with this agent's batch.
    """
    body = message.body
    missing = TOKEN_FIELDS - set(body)
    if missing:
        raise TokenError(f"token from {message.sender} lacks {sorted(missing)}")
    checks = (
        ("iteration", body["iteration"], iteration),
        ("iteration (header)", message.iteration, iteration),
        ("position", body["position"], position),
        ("fingerprint", body["fingerprint"], fingerprint),
    )
    for name, got, expected in checks:
        if got != expected:
            raise TokenError(
                f"token from {message.sender}: {name} is {got!r}, this agent expects {expected!r}"
            )
    values = body["log_ratio_sum"]
    if not (
        isinstance(values, np.ndarray) and values.dtype == np.float32
        and values.shape == (n_samples,)
    ):
        shape = getattr(values, "shape", None)
        raise TokenError(
            f"token from {message.sender}: log_ratio_sum must be float32 ({n_samples},), got "
            f"{getattr(values, 'dtype', type(values).__name__)} {shape}"
        )
    return values


def receive_token(peers: Peers, deadline: float) -> PeerMessage | None:
    """The one blocking wait of the protocol: the next token, or None at ``deadline``.

    Bounded by ``deadline`` (``time.monotonic()`` seconds); waits in slices of at most
    :data:`LIVENESS_POLL_SECONDS`. Lost copies are the sender's to retransmit (``deliver``).
    """
    while (remaining := deadline - time.monotonic()) > 0:
        message = peers.receive(min(remaining, LIVENESS_POLL_SECONDS), frozenset({TOKEN}))
        if message is not None:
            return message
    return None


@dataclass(frozen=True)
class TokenConfig:
    """Settings of the token phase; all agents of a run must use the same values."""

    order: str = "random"
    """``random`` (the paper's uniform permutation) or ``ring`` (random start and direction along
    a ring or path: every hand-over is one hop)."""
    hand_over_timeout: float = 30.0
    """Seconds allowed per earlier position: agent i_m gives up waiting m times this after it
    entered the phase (must exceed one agent's update plus the relay time; 5-120)."""
    seed: int = 0
    """Run seed shared by all agents; with the iteration it fixes the order."""

    def __post_init__(self) -> None:
        if self.order not in ORDER_MODES:
            raise ValueError(
                f"TokenConfig.order={self.order!r}: use one of {', '.join(ORDER_MODES)}"
            )
        if not self.hand_over_timeout > 0:
            raise ValueError(
                f"TokenConfig.hand_over_timeout must be > 0 seconds, got {self.hand_over_timeout}"
            )


Update = Callable[[np.ndarray], np.ndarray]
"""The variant's update given the running sum S it received; returns its own term to add."""


@dataclass
class _PhaseState:
    """What one agent's phase has seen so far."""

    order: tuple[int, ...]
    position: int
    fingerprint: str
    n_samples: int
    started: float
    own: PeerMessage | None = None
    highest_seen: int = -1
    relayed: int = 0
    rejected: int = 0
    late: int = 0
    pending_relays: dict[int, float] = field(default_factory=dict)
    """Destination position → deadline of the hand-overs expected to pass through this agent."""


class TokenRelay:
    """One agent's part in the token phase: wait (relaying others' tokens), update, hand on."""

    def __init__(
        self, agent_id: int, n_agents: int, edges: Iterable[Sequence[int]], config: TokenConfig
    ) -> None:
        self.agent_id = agent_id
        self.n_agents = n_agents
        self.edges = [tuple(edge) for edge in edges]
        self.graph = adjacency(n_agents, self.edges)
        self.config = config
        self.lost: set[int] = set()
        """Agents this agent believes lost (crashed): skipped by the order, avoided by routes."""
        if config.order == "ring":
            ring_sequence(n_agents, self.edges)

    def refresh_lost(
        self, peers: Peers, reported: Iterable[int] = (), sender: int | None = None
    ) -> None:
        """Update the belief of which agents are lost from a token's ``lost`` list.

        The newest token is the freshest view of the agents far away, so its list replaces the
        belief about non-neighbours; neighbours are judged by the network layer
        (``Peers.down``) alone, and the token's sender is alive. A restarted agent thus drops
        out of the belief as soon as a token passes one of its neighbours.
        """
        down = set(peers.down())
        alive_neighbours = set(self.graph[self.agent_id]) - down
        self.lost = (set(reported) | down) - alive_neighbours - {self.agent_id}
        if sender is not None:
            self.lost.discard(sender)

    def order(self, iteration: int) -> tuple[int, ...]:
        """i_1..i_N of ``iteration`` (:func:`update_order`)."""
        return update_order(self.config.order, self.n_agents, self.edges, self.config.seed,
                            iteration)

    def expected_relays(self, order: Sequence[int]) -> list[int]:
        """Destination positions of the hand-overs whose route passes through this agent (as an
        intermediate hop), between consecutive agents of the order not believed lost."""
        alive = [position for position, agent in enumerate(order) if agent not in self.lost]
        relays = []
        for source, destination in itertools.pairwise(alive):
            path = shortest_path(self.graph, order[source], order[destination], avoid=self.lost)
            if path is not None and self.agent_id in path[1:-1]:
                relays.append(destination)
        return relays

    def run(
        self, peers: Peers, fingerprint: str, n_samples: int, update: Update
    ) -> dict[str, float]:
        """The whole phase at this agent; returns its ``token/...`` metrics.

        ``update(S)`` is called exactly once, with the running sum S of the token (zeros for i_1
        and after a lost token), and returns this agent's own term; S + term goes to the next.
        """
        order = self.order(peers.iteration)
        peers.accept_deliveries({TOKEN})
        self.refresh_lost(peers, self.lost)
        state = _PhaseState(order=order, position=order.index(self.agent_id),
                            fingerprint=fingerprint, n_samples=n_samples,
                            started=time.monotonic())
        timeout = self.config.hand_over_timeout
        state.pending_relays = {
            d: state.started + (d + 1) * timeout for d in self.expected_relays(order)
        }
        first = all(agent in self.lost for agent in order[: state.position])
        if not first:
            self._serve(peers, state, state.started + state.position * timeout,
                        lambda: state.own is not None or state.highest_seen > state.position)
        waited = time.monotonic() - state.started
        lost = not first and state.own is None
        if lost:
            logger.warning("agent %d: no token for position %d of iteration %d within %.1f s; "
                           "updating with factor 1", self.agent_id, state.position,
                           peers.iteration, waited)
        received = (
            validate_token(state.own, peers.iteration, state.position, fingerprint, n_samples)
            if state.own is not None else np.zeros(n_samples, np.float32)
        )
        update_started_unix, update_started = time.time(), time.monotonic()
        term = np.asarray(update(received.copy()), dtype=np.float32)
        update_seconds = time.monotonic() - update_started
        self._forward(peers, state.order, {
            "log_ratio_sum": (received + term).astype(np.float32),
            "iteration": peers.iteration, "position": state.position + 1,
            "fingerprint": fingerprint, "hops": 0, "lost": [],
        })
        relay_started = time.monotonic()
        self._serve(peers, state, max(state.pending_relays.values(), default=0.0),
                    lambda: not self._relays_left(state))
        factor = np.exp(received.astype(np.float64))
        return {
            "token/position": float(state.position),
            "token/lost": float(lost),
            "token/hops": float(state.own.body["hops"]) if state.own is not None else 0.0,
            "token/wait_seconds": waited,
            "token/update_seconds": update_seconds,
            "token/relay_seconds": time.monotonic() - relay_started,
            "token/update_started_unix": update_started_unix,
            "token/update_ended_unix": update_started_unix + update_seconds,
            "token/relayed": float(state.relayed),
            "token/rejected": float(state.rejected),
            "token/late": float(state.late),
            "token/factor_mean": float(factor.mean()),
            "token/factor_max": float(factor.max()),
        }

    # -- the loop ---------------------------------------------------------------------------------
    def _serve(self, peers: Peers, state: _PhaseState, deadline: float,
               done: Callable[[], bool]) -> None:
        """Relay others' tokens and keep our own until ``done()`` or ``deadline``."""
        while not done():
            message = receive_token(peers, deadline)
            if message is None:
                return
            self._handle(peers, state, message)

    def _handle(self, peers: Peers, state: _PhaseState, message: PeerMessage) -> None:
        position = message.body.get("position")
        if not isinstance(position, int) or not 0 < position < len(state.order):
            state.rejected += 1
            logger.error("agent %d: token from %d with position %r rejected", self.agent_id,
                         message.sender, position)
            return
        reported = message.body.get("lost")
        if not (isinstance(reported, list)
                and all(isinstance(a, int) and 0 <= a < self.n_agents for a in reported)):
            state.rejected += 1
            logger.error("agent %d: token from %d with lost=%r rejected", self.agent_id,
                         message.sender, reported)
            return
        self.refresh_lost(peers, reported, message.sender)
        state.highest_seen = max(state.highest_seen, position)
        state.pending_relays.pop(position, None)
        if state.order[position] != self.agent_id:
            state.relayed += 1
            position = self._forward(peers, state.order, dict(message.body))
            if position is None:
                return
            message = PeerMessage(message.sender, message.kind, message.iteration,
                                  {**message.body, "position": position})
        if state.own is not None or position != state.position:
            state.late += 1
            return
        try:
            validate_token(message, peers.iteration, state.position, state.fingerprint,
                           state.n_samples)
        except TokenError as error:
            state.rejected += 1
            logger.error("agent %d: %s", self.agent_id, error)
            return
        state.own = message

    def _relays_left(self, state: _PhaseState) -> bool:
        now = time.monotonic()
        return any(d > state.highest_seen and now < deadline
                   for d, deadline in state.pending_relays.items())

    def _forward(self, peers: Peers, order: Sequence[int], body: dict[str, Any]) -> int | None:
        """Send ``body`` one hop towards order[position], skipping destinations that are down or
        unreachable; a token past the end of the order is dropped (the order is complete).

        Returns the position when skipping made this agent the destination (nothing is sent).
        """
        self.refresh_lost(peers, self.lost)
        position = int(body["position"])
        while position < len(order):
            destination = order[position]
            if destination == self.agent_id:
                return position
            if destination not in self.lost:
                path = shortest_path(self.graph, self.agent_id, destination, avoid=self.lost)
                if path is not None:
                    self._deliver(peers, path[1], {**body, "position": position,
                                                   "hops": int(body["hops"]) + 1,
                                                   "lost": sorted(self.lost)})
                    return None
            logger.info("agent %d: skipping position %d (agent %d lost or unreachable)",
                           self.agent_id, position, destination)
            position += 1
        return None

    def _deliver(self, peers: Peers, neighbour: int, body: dict[str, Any]) -> None:
        """One hop, reliably (retransmitted until acknowledged), bounded by one
        ``hand_over_timeout``; a hop given up is logged (the destination then records
        ``token_lost`` at its own deadline)."""
        key = (int(body["position"]), int(body["hops"]))
        deadline = time.monotonic() + self.config.hand_over_timeout
        if not peers.deliver(neighbour, TOKEN, body, key, deadline=deadline):
            logger.warning("agent %d: token for position %d not acknowledged by %d",
                           self.agent_id, key[0], neighbour)
