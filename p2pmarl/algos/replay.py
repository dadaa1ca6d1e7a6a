"""A ring-buffer replay memory D of off-policy learners (MADDPG, Lowe et al. 2017, Algorithm 1).

Pure numpy, no torch and no sockets. Rows are transitions; each field is a fixed-shape array per
row. When full, the oldest rows are overwritten (first in, first out). :func:`shared_indices`
draws minibatch rows from a seed every agent knows, so agents whose buffers hold the same
transitions in the same order (they all saw the same world rollouts) sample the same rows
without exchanging the indices.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


class ReplayBuffer:
    """Fixed-capacity FIFO memory of transitions with named fixed-shape fields."""

    def __init__(self, capacity: int, fields: Mapping[str, tuple[tuple[int, ...], str]]) -> None:
        """``fields``: name → (shape of one row, numpy dtype), e.g. ``{"obs": ((16,), "f4")}``."""
        if capacity < 1:
            raise ValueError(f"replay capacity must be ≥ 1, got {capacity}")
        if not fields:
            raise ValueError("a replay buffer needs at least one field")
        self.capacity = capacity
        self.data = {
            name: np.zeros((capacity, *shape), dtype=dtype)
            for name, (shape, dtype) in fields.items()
        }
        self.size = 0
        """Rows filled, ≤ capacity."""
        self.position = 0
        """Row the next transition is written to."""
        self.added = 0
        """Transitions added since creation (never wraps; the sample seed uses it)."""

    def __len__(self) -> int:
        return self.size

    def add(self, rows: Mapping[str, np.ndarray]) -> None:
        """Append R transitions: every field given, each of shape (R, *row shape)."""
        if set(rows) != set(self.data):
            raise ValueError(f"replay rows need exactly the fields {sorted(self.data)}, "
                             f"got {sorted(rows)}")
        counts = {len(value) for value in rows.values()}
        if len(counts) != 1:
            raise ValueError(f"replay fields have different row counts: {sorted(counts)}")
        count = counts.pop()
        if count > self.capacity:  # only the newest `capacity` rows can be kept
            rows = {name: value[-self.capacity :] for name, value in rows.items()}
            self.added += count - self.capacity
            count = self.capacity
        where = (self.position + np.arange(count)) % self.capacity
        for name, value in rows.items():
            self.data[name][where] = value
        self.position = int((self.position + count) % self.capacity)
        self.size = min(self.capacity, self.size + count)
        self.added += count

    def sample(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """The rows ``indices`` (in 0..size−1) of every field (copies)."""
        if len(indices) and (indices.min() < 0 or indices.max() >= self.size):
            raise IndexError(f"replay indices must be in 0..{self.size - 1}")
        return {name: value[indices] for name, value in self.data.items()}

    @property
    def row_bytes(self) -> int:
        """Bytes one transition takes over all fields."""
        return sum(value[0].nbytes for value in self.data.values())

    def state_dict(self) -> dict[str, Any]:
        """The filled rows only (``size × row_bytes`` bytes) plus the write position."""
        return {
            "capacity": self.capacity,
            "size": self.size,
            "position": self.position,
            "added": self.added,
            "data": {name: value[: self.size].copy() for name, value in self.data.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (same capacity and fields)."""
        if state["capacity"] != self.capacity or set(state["data"]) != set(self.data):
            raise ValueError(
                f"replay checkpoint has capacity {state['capacity']} and fields "
                f"{sorted(state['data'])}; this buffer has {self.capacity} and {sorted(self.data)}"
            )
        self.size, self.position, self.added = state["size"], state["position"], state["added"]
        for name, value in state["data"].items():
            self.data[name][: self.size] = value


def shared_indices(seed: int, update: int, size: int, batch_size: int) -> np.ndarray:
    """Minibatch rows for update number ``update`` of a buffer holding ``size`` rows.

    A pure function of its arguments: every agent with the same ``seed`` (the run's root seed)
    and the same buffer size draws the same rows (uniformly, with replacement, as MADDPG's
    ``make_index``).
    """
    if size < 1:
        raise ValueError("cannot sample from an empty replay buffer")
    rng = np.random.default_rng((seed, update))
    return rng.integers(0, size, size=batch_size)
