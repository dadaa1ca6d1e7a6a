"""Communication topologies: load, validate, describe and draw the agents' graph.

Every agent is an OS process that only talks to its graph neighbours, so the topology file
decides who can exchange messages with whom. This module turns a file into a frozen
:class:`Topology` whose nodes are agent ids ``0..N-1``.

Supported files (chosen by extension, see ``docs/topology.md``):

* ``.yaml`` / ``.yml`` — a *spec*: ``generator:`` (ring, line, star, complete, erdos_renyi,
  random_regular, watts_strogatz, grid) with ``n``/``seed``/params, or an explicit ``edges:`` list.
* ``.json`` — a spec (top-level ``generator`` or pair-list ``edges``) or networkx node-link data
  (``nodes`` as a list of objects plus ``links``/``edges`` as a list of objects).
* ``.graphml``, ``.gml``, ``.edgelist``, ``.adjlist`` — networkx's standard formats.

Node labels become agent ids deterministically: if every label is an integer (or a string
holding one, such as ``"07"``) they are sorted numerically, otherwise they are sorted by
``str(label)``. The k-th label in that order is agent ``k``.

Every problem raises :class:`TopologyError`, whose message names the file, the problem and a fix.
"""

from __future__ import annotations

import io
import json
import operator
import os
import re
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import yaml

__all__ = [
    "GENERATORS",
    "SUPPORTED_EXTENSIONS",
    "Topology",
    "TopologyError",
    "agent_order",
    "describe",
    "draw_topology",
    "format_description",
    "load_topology",
    "topology_from_graph",
    "topology_from_spec",
]

Address = tuple[str, int]
Edge = tuple[int, int]

SUPPORTED_EXTENSIONS: tuple[str, ...] = (
    ".yaml",
    ".yml",
    ".json",
    ".graphml",
    ".gml",
    ".edgelist",
    ".adjlist",
)

_SPEC_KEYS = (
    "generator",
    "n",
    "seed",
    "p",
    "k",
    "rows",
    "cols",
    "edges",
    "nodes",
    "addresses",
    "name",
)
_COMMON_SPEC_KEYS = frozenset({"addresses", "name"})
_EDGES_SPEC_KEYS = frozenset({"edges", "nodes"}) | _COMMON_SPEC_KEYS
_INT_LABEL = re.compile(r"[+-]?\d+")


class TopologyError(ValueError):
    """A topology file is missing, malformed or unsuitable; the message says how to fix it."""


def _err(source: str, problem: str, fix: str) -> TopologyError:
    """Build a :class:`TopologyError` that names the file, the problem and the fix."""
    return TopologyError(f"topology {source}: {problem}. Fix: {fix}")


# --------------------------------------------------------------------------------------------
# The Topology value
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Topology:
    """A validated, undirected communication graph over agent ids ``0..n_agents-1``.

    Attributes:
        graph: simple undirected graph on nodes ``0..N-1``; node attribute ``label`` holds the
            original label, plus ``host``/``port`` when the file gave addresses.
        n_agents: number of agents N.
        edges: sorted ``(i, j)`` pairs with ``i < j``.
        labels: ``labels[k]`` is the original node label (as ``str``) of agent ``k``.
        addresses: agent id -> ``(host, port)``; empty when the file gave none.
        source: the file path the topology was read from (or ``"<spec>"``/``"<graph>"``).
        name: a short human name (the spec's ``name``, the graph's name, or the file stem).
    """

    graph: nx.Graph
    n_agents: int
    edges: tuple[Edge, ...]
    labels: tuple[str, ...]
    addresses: dict[int, Address]
    source: str
    name: str = ""

    def _check_agent(self, i: int) -> int:
        try:
            idx = operator.index(i)
        except TypeError:
            raise TypeError(f"agent id must be an int, got {type(i).__name__} {i!r}") from None
        if not 0 <= idx < self.n_agents:
            raise ValueError(
                f"agent id {idx} is out of range for topology {self.source} "
                f"(valid ids are 0..{self.n_agents - 1})"
            )
        return idx

    def neighbours(self, i: int) -> tuple[int, ...]:
        """Agent ids adjacent to agent ``i``, sorted ascending."""
        return tuple(sorted(self.graph.adj[self._check_agent(i)]))

    def degree(self, i: int) -> int:
        """Number of neighbours of agent ``i``."""
        return len(self.graph.adj[self._check_agent(i)])

    def is_connected(self) -> bool:
        """True when every agent can reach every other agent through the graph."""
        return nx.is_connected(self.graph)

    def to_node_link(self) -> dict[str, Any]:
        """The graph as a JSON-serialisable networkx node-link dict (edges under ``"edges"``)."""
        return _node_link_data(self.graph)

    def save_node_link(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_node_link` as JSON to ``path`` (parents created); return the path.

        The file loads back with :func:`load_topology` to the same agent ids, edges and
        addresses, which makes it a good way to freeze a randomly generated topology.
        """
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(self.to_node_link(), indent=2) + "\n", encoding="utf-8")
        return out


def _node_link_data(graph: nx.Graph) -> dict[str, Any]:
    """``nx.node_link_data`` with the edge list under ``"edges"`` on every networkx >= 3.2."""
    try:
        return nx.node_link_data(graph, edges="edges")
    except TypeError:  # networkx < 3.4 calls the keyword ``link``
        return nx.node_link_data(graph, link="edges")


def _node_link_graph(data: Mapping[str, Any], edges_key: str) -> nx.Graph:
    """``nx.node_link_graph`` reading edges from ``edges_key`` on every networkx >= 3.2."""
    try:
        return nx.node_link_graph(data, edges=edges_key)
    except TypeError as exc:
        if "edges" not in str(exc):
            raise
        return nx.node_link_graph(data, link=edges_key)


# --------------------------------------------------------------------------------------------
# Public loaders
# --------------------------------------------------------------------------------------------


def load_topology(
    path: str | os.PathLike[str],
    *,
    require_connected: bool = False,
    expected_agents: int | None = None,
    env_name: str | None = None,
) -> Topology:
    """Read, validate and return the topology stored at ``path``.

    The format is chosen by extension (see :data:`SUPPORTED_EXTENSIONS`). Node labels map to
    agent ids deterministically: all-integer labels (ints or strings of ints) are sorted
    numerically, anything else is sorted by ``str(label)``. Directed graphs are made
    undirected and parallel edges merged; edge attributes are ignored.

    Args:
        path: the topology file.
        require_connected: raise if the graph has more than one connected component.
        expected_agents: raise unless the topology has exactly this many agents.
        env_name: environment name used in the size-mismatch message.

    Raises:
        TopologyError: on any problem; the message names the file and how to fix it.
    """
    source = str(path)
    data = _read_bytes(Path(path), source)
    suffix = Path(path).suffix.lower()
    reader = _READERS.get(suffix)
    if reader is None:
        raise _err(
            source,
            f"unsupported file extension {suffix or '(none)'!r}",
            f"use one of {', '.join(SUPPORTED_EXTENSIONS)} (see docs/topology.md)",
        )
    graph, raw_addresses, name = reader(data, source)
    topology = _build_topology(graph, raw_addresses, source, name or Path(path).stem)
    if expected_agents is not None:
        _check_size(topology, expected_agents, env_name)
    if require_connected:
        _check_connected(topology)
    return topology


def topology_from_spec(spec: Mapping[str, Any], *, source: str = "<spec>") -> Topology:
    """Build a topology from an in-memory spec dict (the same keys as a YAML spec file).

    Example: ``topology_from_spec({"generator": "ring", "n": 4})``.
    """
    graph, raw_addresses, name = _graph_from_spec(spec, source)
    return _build_topology(graph, raw_addresses, source, name or "")


def topology_from_graph(
    graph: nx.Graph,
    *,
    source: str = "<graph>",
    name: str = "",
    addresses: Mapping[Hashable, Any] | None = None,
) -> Topology:
    """Validate an in-memory networkx graph and relabel it to agent ids like a loaded file.

    ``addresses`` maps node labels to ``"host:port"`` or ``{"host": ..., "port": ...}``; when
    omitted, node attributes ``host``/``port``/``address`` are used if present.
    """
    raw = _addresses_from_nodes(graph) if addresses is None else _keyed_by_str(addresses, source)
    return _build_topology(graph, raw, source, name)


# --------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------

RawAddresses = dict[str, Any]
Parsed = tuple[nx.Graph, RawAddresses, str | None]


def _read_bytes(path: Path, source: str) -> bytes:
    """Return the file's bytes, raising a teaching error if missing, unreadable or empty."""
    if not path.exists():
        raise _err(
            source,
            "file not found",
            "check the path (bundled files live in topologies/, e.g. topologies/ring6.yaml)",
        )
    if path.is_dir():
        raise _err(source, "is a directory, not a file", "pass a topology file inside it")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _err(
            source, f"cannot read the file ({exc.strerror or exc})", "check the file's permissions"
        ) from exc
    if not data.strip():
        raise _err(
            source,
            "the file is empty",
            "write a graph into it, e.g. 'generator: ring' and 'n: 6' on two lines",
        )
    return data


def _decode(data: bytes, source: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _err(source, f"the file is not UTF-8 text ({exc})", "save it as UTF-8") from exc


def _parse_failed(source: str, fmt: str, exc: Exception) -> TopologyError:
    return _err(
        source,
        f"could not parse the file as {fmt}: {exc}",
        f"fix the {fmt} syntax at the place the parser names, or check the extension",
    )


def _read_yaml(data: bytes, source: str) -> Parsed:
    try:
        spec = yaml.safe_load(_decode(data, source))
    except yaml.YAMLError as exc:
        raise _parse_failed(source, "YAML", exc) from exc
    if spec is None:
        raise _err(
            source,
            "the file holds only comments or blank lines",
            "add a spec, e.g. 'generator: ring' and 'n: 6'",
        )
    return _graph_from_spec(spec, source)


def _read_json(data: bytes, source: str) -> Parsed:
    try:
        obj = json.loads(_decode(data, source))
    except json.JSONDecodeError as exc:
        raise _parse_failed(source, "JSON", exc) from exc
    if isinstance(obj, dict) and "generator" not in obj and _is_node_link(obj):
        return _read_node_link(obj, source)
    if isinstance(obj, dict) and ("generator" in obj or "edges" in obj):
        return _graph_from_spec(obj, source)
    raise _err(
        source,
        "the JSON is neither a topology spec nor networkx node-link data",
        "give a top-level 'generator' or 'edges' key (spec), or 'nodes' plus 'links'/'edges' "
        "lists of objects (node-link, as written by `p2pmarl topology` or nx.node_link_data)",
    )


def _is_node_link(obj: Mapping[str, Any]) -> bool:
    """Node-link data has ``nodes`` as a list of objects and ``links``/``edges`` of objects."""
    nodes = obj.get("nodes")
    links = obj.get("links", obj.get("edges"))
    return (
        isinstance(nodes, list)
        and all(isinstance(n, dict) for n in nodes)
        and isinstance(links, list)
        and all(isinstance(e, dict) for e in links)
    )


def _read_node_link(obj: dict[str, Any], source: str) -> Parsed:
    key = "links" if "links" in obj else "edges"
    try:
        graph = _node_link_graph(obj, key)
    except (nx.NetworkXError, KeyError, TypeError, ValueError) as exc:
        raise _parse_failed(source, "node-link JSON", exc) from exc
    return graph, _addresses_from_nodes(graph), _graph_name(graph)


def _read_graphml(data: bytes, source: str) -> Parsed:
    try:
        graph = nx.read_graphml(io.BytesIO(data))
    except Exception as exc:  # xml ParseError, NetworkXError, ValueError, ...
        raise _parse_failed(source, "GraphML", exc) from exc
    return graph, _addresses_from_nodes(graph), _graph_name(graph)


def _read_gml(data: bytes, source: str) -> Parsed:
    """Read GML; nodes take their ``label`` when every node has a unique one, else their id."""
    try:
        graph = nx.read_gml(io.BytesIO(data), label=None)
    except Exception as exc:
        raise _parse_failed(source, "GML", exc) from exc
    names = [attrs.get("label") for _, attrs in graph.nodes(data=True)]
    if all(isinstance(x, str | int) for x in names) and len(set(names)) == len(names):
        graph = nx.relabel_nodes(graph, dict(zip(graph.nodes, names, strict=True)))
    return graph, _addresses_from_nodes(graph), _graph_name(graph)


def _read_edgelist(data: bytes, source: str) -> Parsed:
    try:
        graph = nx.read_edgelist(io.BytesIO(data), data=True)
    except Exception as exc:
        raise _parse_failed(source, "an edge list ('u v' or 'u v {dict}' per line)", exc) from exc
    return graph, {}, None


def _read_adjlist(data: bytes, source: str) -> Parsed:
    try:
        graph = nx.read_adjlist(io.BytesIO(data))
    except Exception as exc:
        raise _parse_failed(source, "an adjacency list ('u v1 v2 ...' per line)", exc) from exc
    return graph, {}, None


_READERS: dict[str, Callable[[bytes, str], Parsed]] = {
    ".yaml": _read_yaml,
    ".yml": _read_yaml,
    ".json": _read_json,
    ".graphml": _read_graphml,
    ".gml": _read_gml,
    ".edgelist": _read_edgelist,
    ".adjlist": _read_adjlist,
}


def _graph_name(graph: nx.Graph) -> str | None:
    name = graph.graph.get("name")
    return name if isinstance(name, str) and name else None


def _addresses_from_nodes(graph: nx.Graph) -> RawAddresses:
    """Collect ``address`` or ``host``/``port`` node attributes, keyed by ``str(label)``."""
    raw: RawAddresses = {}
    for node, attrs in graph.nodes(data=True):
        if "address" in attrs:
            raw[str(node)] = attrs["address"]
        elif "host" in attrs or "port" in attrs:
            raw[str(node)] = {k: attrs[k] for k in ("host", "port") if k in attrs}
    return raw


def _keyed_by_str(addresses: Any, source: str) -> RawAddresses:
    if not isinstance(addresses, Mapping):
        raise _err(
            source,
            f"'addresses' must be a mapping, got {type(addresses).__name__}",
            "write 'addresses:' then one 'node_label: \"host:port\"' line per node",
        )
    raw: RawAddresses = {}
    for key, value in addresses.items():
        if str(key) in raw:
            raise _err(
                source, f"'addresses' lists node {str(key)!r} twice", "keep one address per node"
            )
        raw[str(key)] = value
    return raw


# --------------------------------------------------------------------------------------------
# Specs: generators and explicit edge lists
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Generator:
    """A named graph generator: its parameters and a builder taking the validated spec."""

    params: tuple[str, ...]
    random: bool
    build: Callable[[dict[str, Any]], nx.Graph]
    min_n: int = 2
    needs_n: bool = True


def _grid(s: dict[str, Any]) -> nx.Graph:
    rows, cols = s["rows"], s["cols"]
    grid = nx.grid_2d_graph(rows, cols)
    return nx.relabel_nodes(grid, {(r, c): r * cols + c for r, c in grid.nodes})


GENERATORS: dict[str, _Generator] = {
    "ring": _Generator((), False, lambda s: nx.cycle_graph(s["n"]), min_n=3),
    "line": _Generator((), False, lambda s: nx.path_graph(s["n"])),
    "star": _Generator((), False, lambda s: nx.star_graph(s["n"] - 1)),
    "complete": _Generator((), False, lambda s: nx.complete_graph(s["n"])),
    "erdos_renyi": _Generator(
        ("p",), True, lambda s: nx.gnp_random_graph(s["n"], s["p"], seed=s["seed"])
    ),
    "random_regular": _Generator(
        ("k",), True, lambda s: nx.random_regular_graph(s["k"], s["n"], seed=s["seed"])
    ),
    "watts_strogatz": _Generator(
        ("k", "p"),
        True,
        lambda s: nx.watts_strogatz_graph(s["n"], s["k"], s["p"], seed=s["seed"]),
        min_n=3,
    ),
    "grid": _Generator(("rows", "cols"), False, _grid, needs_n=False),
}
_ALIASES = {"cycle": "ring", "path": "line"}
_GENERATOR_HELP = (
    "ring (alias cycle), line (alias path), star, complete, erdos_renyi (p), "
    "random_regular (k), watts_strogatz (k, p), grid (rows, cols)"
)


def _graph_from_spec(spec: Any, source: str) -> Parsed:
    """Validate a spec mapping and build its graph and raw addresses."""
    if not isinstance(spec, Mapping):
        raise _err(
            source,
            f"the top level must be a mapping, got {type(spec).__name__}",
            "start the file with 'generator: ring' (plus 'n: 6') or with 'edges:'",
        )
    for key in spec:
        if key not in _SPEC_KEYS:
            raise _err(
                source,
                f"unknown key {key!r}",
                f"use only the allowed keys: {', '.join(_SPEC_KEYS)}",
            )
    has_gen, has_edges = "generator" in spec, "edges" in spec
    if has_gen == has_edges:
        problem = (
            "both 'generator' and 'edges' are given"
            if has_gen
            else "neither 'generator' nor 'edges' is given"
        )
        raise _err(
            source,
            problem,
            "give exactly one: 'generator: NAME' with its params, or an 'edges:' list",
        )
    name = spec.get("name")
    if name is not None and not isinstance(name, str):
        raise _err(source, f"'name' must be a string, got {name!r}", "quote the name")
    graph = _generate(spec, source) if has_gen else _explicit_graph(spec, source)
    raw = _keyed_by_str(spec["addresses"], source) if "addresses" in spec else {}
    return graph, raw, name


def _generate(spec: Mapping[str, Any], source: str) -> nx.Graph:
    """Build the graph of a ``generator:`` spec after checking every parameter."""
    gname = spec["generator"]
    canonical = _ALIASES.get(gname, gname) if isinstance(gname, str) else gname
    if canonical not in GENERATORS:
        raise _err(source, f"unknown generator {gname!r}", f"use one of: {_GENERATOR_HELP}")
    gen = GENERATORS[canonical]
    allowed = {"generator", "n", "seed", *gen.params} | _COMMON_SPEC_KEYS
    for key in spec:
        if key not in allowed:
            raise _err(
                source,
                f"key {key!r} does not apply to generator {canonical!r}",
                f"{canonical} takes: {', '.join(['n', *gen.params, 'seed'])}; "
                "remove the key or pick a generator that uses it",
            )
    s: dict[str, Any] = {"seed": _seed(spec, source, gen.random, canonical)}
    for param in gen.params:
        s[param] = _param(spec, param, source, canonical)
    s["n"] = _n(spec, source, canonical, gen, s)
    _check_generator_params(canonical, s, source)
    try:
        return gen.build(s)
    except (nx.NetworkXError, ValueError) as exc:
        raise _err(
            source,
            f"generator {canonical!r} rejected the parameters: {exc}",
            "adjust n and the parameters (see docs/topology.md)",
        ) from exc


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _seed(spec: Mapping[str, Any], source: str, random: bool, gname: str) -> int | None:
    seed = spec.get("seed")
    if seed is None:
        if random:
            raise _err(
                source,
                f"generator {gname!r} is random but no 'seed' is given",
                "add 'seed: 0' (any integer) so every run builds the same graph",
            )
        return None
    if not _is_int(seed):
        raise _err(source, f"'seed' must be an integer, got {seed!r}", "write e.g. 'seed: 0'")
    return seed


def _param(spec: Mapping[str, Any], key: str, source: str, gname: str) -> Any:
    if key not in spec:
        raise _err(
            source,
            f"generator {gname!r} needs parameter {key!r}",
            f"add '{key}: VALUE' (see docs/topology.md for {gname})",
        )
    value = spec[key]
    if key == "p":
        ok = isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1
        if not ok:
            raise _err(
                source, f"'p' must be a probability in [0, 1], got {value!r}", "write e.g. 'p: 0.3'"
            )
        return float(value)
    if not _is_int(value) or value < 1:
        raise _err(
            source, f"{key!r} must be a positive integer, got {value!r}", f"write e.g. '{key}: 2'"
        )
    return value


def _n(spec: Mapping[str, Any], source: str, gname: str, gen: _Generator, s: dict) -> int:
    if not gen.needs_n:  # grid: n is implied by rows * cols, and checked if given
        implied = s["rows"] * s["cols"]
        if "n" in spec and spec["n"] != implied:
            raise _err(
                source,
                f"'n' is {spec['n']!r} but rows*cols = {s['rows']}*{s['cols']} = {implied}",
                "drop 'n' for grids or make it equal rows*cols",
            )
        return implied
    n = spec.get("n")
    if n is None:
        raise _err(
            source, f"generator {gname!r} needs 'n' (the number of agents)", "add e.g. 'n: 6'"
        )
    if not _is_int(n) or n < gen.min_n:
        hint = "use 'line' for 2 agents" if gname == "ring" else f"use n >= {gen.min_n}"
        raise _err(source, f"'n' for {gname!r} must be an integer >= {gen.min_n}, got {n!r}", hint)
    return n


def _check_generator_params(gname: str, s: dict[str, Any], source: str) -> None:
    """Generator-specific constraints that networkx would report less clearly."""
    n, k = s.get("n"), s.get("k")
    if gname == "random_regular":
        if k >= n:
            raise _err(
                source, f"random_regular needs k < n, got k={k}, n={n}", "lower k or raise n"
            )
        if (n * k) % 2:
            raise _err(
                source,
                f"random_regular needs n*k even, got n={n}, k={k}",
                "change n or k so their product is even",
            )
    if gname == "watts_strogatz" and (k % 2 or k < 2 or k >= n):
        raise _err(
            source,
            f"watts_strogatz needs an even k with 2 <= k < n, got k={k}, n={n}",
            "k is the ring-lattice degree (k/2 neighbours per side): use e.g. k: 4",
        )
    if gname == "grid" and s["rows"] * s["cols"] < 2:
        raise _err(source, "a 1x1 grid has a single agent", "use rows*cols >= 2")


def _check_label(value: Any, where: str, source: str) -> Hashable:
    if _is_int(value) or (isinstance(value, str) and value.strip()):
        return value
    raise _err(
        source,
        f"{where}: node label {value!r} is not an integer or a non-empty string",
        "use integers or quoted strings as node labels (YAML reads yes/no/on/off "
        "as booleans and 1.5 as a float, so quote them)",
    )


def _explicit_graph(spec: Mapping[str, Any], source: str) -> nx.Graph:
    """Build the graph of an ``edges:`` spec (``nodes:``, if given, is the full node set)."""
    for key in spec:
        if key not in _EDGES_SPEC_KEYS:
            raise _err(
                source,
                f"key {key!r} only applies to 'generator' specs",
                "an 'edges:' spec takes only: edges, nodes, addresses, name",
            )
    edges = spec["edges"]
    if not isinstance(edges, list):
        raise _err(
            source,
            f"'edges' must be a list of [u, v] pairs, got {type(edges).__name__}",
            "write e.g. 'edges: [[0, 1], [1, 2]]'",
        )
    graph = nx.Graph()
    declared = _declared_nodes(spec, source)
    graph.add_nodes_from(declared or [])
    for idx, pair in enumerate(edges):
        if not isinstance(pair, list | tuple) or len(pair) != 2:
            raise _err(
                source,
                f"edges[{idx}] is {pair!r}, not a [u, v] pair",
                "write each edge as a two-element list, e.g. [0, 1]",
            )
        u, v = (_check_label(x, f"edges[{idx}]", source) for x in pair)
        for node in (u, v):
            if declared is not None and node not in declared:
                raise _err(
                    source,
                    f"edges[{idx}] uses node {node!r}, which is not in 'nodes'",
                    "add it to 'nodes' or fix the typo ('nodes' lists every node)",
                )
        graph.add_edge(u, v)
    return graph


def _declared_nodes(spec: Mapping[str, Any], source: str) -> set[Hashable] | None:
    if "nodes" not in spec:
        return None
    nodes = spec["nodes"]
    if not isinstance(nodes, list):
        raise _err(
            source,
            f"'nodes' must be a list, got {type(nodes).__name__}",
            "write e.g. 'nodes: [0, 1, 2, 3]'",
        )
    labels = [_check_label(x, "nodes", source) for x in nodes]
    dupes = sorted({str(x) for x, c in Counter(labels).items() if c > 1})
    if dupes:
        raise _err(
            source, f"'nodes' lists {', '.join(dupes)} more than once", "list each node once"
        )
    return set(labels)


# --------------------------------------------------------------------------------------------
# Validation and relabelling
# --------------------------------------------------------------------------------------------


def _simple_undirected(graph: nx.Graph) -> nx.Graph:
    """Drop direction and parallel edges: links are bidirectional and counted once."""
    undirected = graph.to_undirected() if graph.is_directed() else graph
    return nx.Graph(undirected)


def agent_order(labels: Iterable[Hashable]) -> list[Hashable]:
    """Sort node labels into agent-id order (numeric if all are ints, else by ``str``)."""
    labels = list(labels)
    if all(_is_int(x) or (isinstance(x, str) and _INT_LABEL.fullmatch(x.strip())) for x in labels):
        return sorted(labels, key=lambda x: (int(str(x).strip()), str(x)))
    return sorted(labels, key=str)


def _build_topology(graph: nx.Graph, raw: RawAddresses, source: str, name: str) -> Topology:
    """Validate a raw graph, map its labels to agent ids and attach addresses."""
    graph = _simple_undirected(graph)
    loops = [u for u, v in nx.selfloop_edges(graph)]
    if loops:
        raise _err(
            source,
            f"node {loops[0]!r} has a self-loop (an edge to itself)",
            "remove that edge; an agent always has its own data",
        )
    if graph.number_of_nodes() < 2:
        raise _err(
            source,
            f"the graph has {graph.number_of_nodes()} node(s), "
            "a multi-agent topology needs at least 2",
            "add more nodes/edges",
        )
    order = agent_order(graph.nodes)
    labels = tuple(str(x) for x in order)
    _check_unique_labels(order, source)
    ids = {label: k for k, label in enumerate(order)}
    relabelled = nx.Graph(name=name)
    relabelled.add_nodes_from((k, {"label": labels[k]}) for k in range(len(order)))
    relabelled.add_edges_from((ids[u], ids[v]) for u, v in graph.edges)
    addresses = _parse_addresses(raw, labels, source)
    for k, (host, port) in addresses.items():
        relabelled.nodes[k].update(host=host, port=port)
    edges = tuple(sorted((min(u, v), max(u, v)) for u, v in relabelled.edges))
    return Topology(relabelled, len(order), edges, labels, addresses, source, name)


def _check_unique_labels(order: list[Hashable], source: str) -> None:
    seen: dict[str, Hashable] = {}
    for label in order:
        if str(label) in seen:
            raise _err(
                source,
                f"nodes {seen[str(label)]!r} and {label!r} both read as label {str(label)!r}",
                "give every node a distinct label",
            )
        seen[str(label)] = label


def _check_size(topology: Topology, expected: int, env_name: str | None) -> None:
    if topology.n_agents == expected:
        return
    who = f"environment {env_name!r} needs" if env_name else "the run expects"
    raise TopologyError(
        f"topology {topology.source} has {topology.n_agents} agents but {who} {expected}. "
        f"Fix: pick a topology with {expected} nodes (e.g. write 'generator: ring' and "
        f"'n: {expected}' to a YAML file) or change the number of agents"
    )


def _check_connected(topology: Topology) -> None:
    components = sorted(nx.connected_components(topology.graph), key=min)
    if len(components) == 1:
        return
    shown = [
        f"agent {min(c)} (label {topology.labels[min(c)]!r}, {len(c)} agents)"
        for c in components[:8]
    ]
    more = f" and {len(components) - 8} more" if len(components) > 8 else ""
    raise _err(
        topology.source,
        f"the graph is disconnected: {len(components)} components, one containing each "
        f"of {'; '.join(shown)}{more}",
        "add edges joining the components (or, for a random generator, try another "
        "seed or a larger p/k) so information can reach every agent",
    )


# --------------------------------------------------------------------------------------------
# Addresses
# --------------------------------------------------------------------------------------------


def _parse_addresses(raw: RawAddresses, labels: tuple[str, ...], source: str) -> dict[int, Address]:
    """Turn raw ``label -> address`` entries into ``agent id -> (host, port)``; all or none."""
    if not raw:
        return {}
    ids = {label: k for k, label in enumerate(labels)}
    unknown = [key for key in raw if key not in ids]
    if unknown:
        raise _err(
            source,
            f"an address is given for node {unknown[0]!r}, which is not in the graph",
            f"use one of the node labels: {', '.join(labels[:12])}"
            + (" ..." if len(labels) > 12 else ""),
        )
    missing = [label for label in labels if label not in raw]
    if missing:
        raise _err(
            source,
            f"addresses are given for {len(raw)} of {len(labels)} nodes; "
            f"missing: {', '.join(missing[:12])}",
            "give every node an address, or none (the launcher then picks ports)",
        )
    addresses: dict[int, Address] = {}
    owner: dict[Address, str] = {}
    for label in labels:
        addr = _parse_address(raw[label], label, source)
        if addr in owner:
            raise _err(
                source,
                f"nodes {owner[addr]!r} and {label!r} share the address {addr[0]}:{addr[1]}",
                "give each agent its own host:port",
            )
        owner[addr] = label
        addresses[ids[label]] = addr
    return addresses


def _parse_address(value: Any, label: str, source: str) -> Address:
    """Parse ``"host:port"`` or ``{"host": ..., "port": ...}`` for node ``label``."""
    where = f"address of node {label!r}"
    if isinstance(value, str):
        host, sep, port = value.strip().rpartition(":")
        if not sep:
            raise _err(
                source,
                f"{where} is {value!r}, which has no ':port'",
                'write it as "host:port", e.g. "127.0.0.1:5555"',
            )
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    elif isinstance(value, Mapping):
        extra = sorted(set(map(str, value)) - {"host", "port"})
        if extra or "host" not in value or "port" not in value:
            raise _err(
                source,
                f"{where} must have exactly the keys host and port, got {sorted(map(str, value))}",
                'write e.g. {host: 127.0.0.1, port: 5555} (or "127.0.0.1:5555")',
            )
        host, port = value["host"], value["port"]
    else:
        raise _err(
            source, f"{where} is {value!r}", 'write it as "host:port" or as {host: ..., port: ...}'
        )
    return _check_host(host, where, source), _check_port(port, where, source)


def _check_host(host: Any, where: str, source: str) -> str:
    if not isinstance(host, str) or not host.strip() or any(c.isspace() for c in host.strip()):
        raise _err(
            source,
            f"{where} has an invalid host {host!r}",
            "use a hostname or IP such as 127.0.0.1",
        )
    return host.strip()


def _check_port(port: Any, where: str, source: str) -> int:
    if isinstance(port, str) and port.strip().isdigit():
        port = int(port.strip())
    if not _is_int(port) or not 1 <= port <= 65535:
        raise _err(
            source,
            f"{where} has an invalid port {port!r}",
            "use an integer port between 1 and 65535 (e.g. 5555)",
        )
    return port


# --------------------------------------------------------------------------------------------
# Describing
# --------------------------------------------------------------------------------------------


def _algebraic_connectivity(graph: nx.Graph) -> float:
    """Second-smallest Laplacian eigenvalue, computed exactly with numpy (no scipy needed).

    Dense ``eigvalsh`` is exact and fast for the few hundred agents a process-per-agent run can
    hold, unlike ``nx.algebraic_connectivity``'s iterative solver, which needs scipy.
    """
    n = graph.number_of_nodes()
    if n < 2 or not nx.is_connected(graph):
        return 0.0
    adj = nx.to_numpy_array(graph, nodelist=range(n), weight=None)
    laplacian = np.diag(adj.sum(axis=1)) - adj
    lam2 = float(np.linalg.eigvalsh(laplacian)[1])
    return round(max(lam2, 0.0), 12)


def describe(topology: Topology) -> dict[str, Any]:
    """Summary statistics of a topology, as a JSON-serialisable dict.

    Keys: name, source, n_agents, n_edges, degrees (per agent id), min_degree, max_degree,
    mean_degree, connected, n_components, diameter (None if disconnected),
    algebraic_connectivity (0.0 if disconnected; larger means faster consensus),
    has_addresses.
    """
    g = topology.graph
    degrees = [g.degree(i) for i in range(topology.n_agents)]
    connected = nx.is_connected(g)
    return {
        "name": topology.name,
        "source": topology.source,
        "n_agents": topology.n_agents,
        "n_edges": len(topology.edges),
        "degrees": degrees,
        "min_degree": min(degrees),
        "max_degree": max(degrees),
        "mean_degree": sum(degrees) / len(degrees),
        "connected": connected,
        "n_components": nx.number_connected_components(g),
        "diameter": nx.diameter(g) if connected else None,
        "algebraic_connectivity": _algebraic_connectivity(g),
        "has_addresses": bool(topology.addresses),
    }


def format_description(d: Mapping[str, Any]) -> str:
    """Render :func:`describe`'s dict as the report printed by ``p2pmarl topology check``."""
    degrees = list(d["degrees"])
    histogram = ", ".join(f"{deg}: {count}" for deg, count in sorted(Counter(degrees).items()))
    connected = "yes" if d["connected"] else f"NO ({d['n_components']} components)"
    lines = [
        f"Topology {d['name'] or '(unnamed)'}  [{d['source']}]",
        f"  agents                  {d['n_agents']}",
        f"  edges                   {d['n_edges']}",
        f"  degree min/mean/max     {d['min_degree']} / {d['mean_degree']:.2f} / {d['max_degree']}",
        f"  degree histogram        {histogram}  (degree: agents)",
        f"  connected               {connected}",
        f"  diameter                {d['diameter'] if d['diameter'] is not None else 'n/a'}",
        f"  algebraic connectivity  {d['algebraic_connectivity']:.4f}"
        "  (0 = disconnected; larger = faster consensus)",
        f"  addresses               {'given in file' if d['has_addresses'] else 'none'}",
    ]
    if len(degrees) <= 32:
        lines.insert(
            5,
            "  degree per agent        " + " ".join(f"{i}:{deg}" for i, deg in enumerate(degrees)),
        )
    if not d["connected"]:
        lines.append(
            "  WARNING: disconnected; agents in different components never exchange "
            "information, so they cannot reach consensus."
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------


def _normalise_edges(topology: Topology, edges: Iterable[Any], what: str) -> list[Edge]:
    out = []
    known = set(topology.edges)
    for u, v in edges:
        edge = (min(int(u), int(v)), max(int(u), int(v)))
        if edge not in known:
            raise ValueError(
                f"{what} mentions {edge}, which is not an edge of topology "
                f"{topology.source}; pass only pairs from topology.edges"
            )
        out.append(edge)
    return out


def _cycle_order(graph: nx.Graph) -> list[int] | None:
    """Agent ids in walking order around the ring, or None if the graph is not one cycle."""
    n = graph.number_of_nodes()
    if n < 3 or any(d != 2 for _, d in graph.degree) or not nx.is_connected(graph):
        return None
    order, prev = [0], None
    while len(order) < n:
        nxt = min(v for v in graph.adj[order[-1]] if v != prev)
        prev = order[-1]
        order.append(nxt)
    return order


def _layout(topology: Topology) -> dict[int, np.ndarray]:
    """Deterministic positions: a circle for rings and complete graphs, else seeded spring."""
    g, n = topology.graph, topology.n_agents
    order = _cycle_order(g)
    if order is None and len(topology.edges) == n * (n - 1) // 2:
        order = list(range(n))
    if order is None:
        return {k: np.asarray(p) for k, p in nx.spring_layout(g, seed=0).items()}
    angles = np.pi / 2 - 2 * np.pi * np.arange(n) / n
    return {node: np.array([np.cos(a), np.sin(a)]) for node, a in zip(order, angles, strict=True)}


def draw_topology(
    topology: Topology,
    png_path: str | os.PathLike[str],
    *,
    edge_values: Mapping[tuple[int, int], float] | None = None,
    failed_edges: Iterable[tuple[int, int]] | None = None,
    title: str | None = None,
    value_label: str = "edge value",
) -> Path:
    """Draw the topology to a PNG file and return its path.

    Nodes are labelled with agent ids. The layout is deterministic (rings and complete graphs
    on a circle, other graphs by a seeded spring layout). ``edge_values`` colours edges (either
    orientation of a pair is accepted) and adds a colour bar titled ``value_label``; edges
    without a value are grey. ``failed_edges`` are drawn dashed red. Uses matplotlib's Agg
    canvas directly, so it needs no display and does not change the global backend.
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.collections import LineCollection
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    values = dict(
        zip(
            _normalise_edges(topology, (edge_values or {}).keys(), "edge_values"),
            (float(x) for x in (edge_values or {}).values()),
            strict=True,
        )
    )
    failed = set(_normalise_edges(topology, failed_edges or (), "failed_edges"))
    pos = _layout(topology)
    n = topology.n_agents
    fig = Figure(figsize=(7.5 if values else 6.5, 6.0), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()

    def segments(edges: Iterable[Edge]) -> list[np.ndarray]:
        return [np.stack([pos[u], pos[v]]) for u, v in edges]

    plain = [e for e in topology.edges if e not in failed and e not in values]
    valued = [e for e in topology.edges if e not in failed and e in values]
    ax.add_collection(LineCollection(segments(plain), colors="#9a9a9a", linewidths=1.5, zorder=1))
    if values:
        lo, hi = min(values.values()), max(values.values())
        norm = Normalize(lo - 0.5, hi + 0.5) if lo == hi else Normalize(lo, hi)
        cmap = colormaps["viridis"]
        colours = [cmap(norm(values[e])) for e in valued]
        ax.add_collection(LineCollection(segments(valued), colors=colours, linewidths=3, zorder=2))
        fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=value_label, shrink=0.8)
    if failed:
        ax.add_collection(
            LineCollection(
                segments(sorted(failed)), colors="red", linewidths=2, linestyles="dashed", zorder=2
            )
        )
        ax.legend(
            handles=[Line2D([], [], color="red", linestyle="--", label="failed link")],
            loc="lower right",
            fontsize=8,
        )
    xy = np.array([pos[k] for k in range(n)])
    size = 600 if n <= 12 else max(180, 600 - 15 * (n - 12))
    ax.scatter(xy[:, 0], xy[:, 1], s=size, c="#dbe9f6", edgecolors="#1f4e79", zorder=3)
    for k in range(n):
        ax.text(*pos[k], str(k), ha="center", va="center", fontsize=9 if n <= 24 else 7, zorder=4)
    ax.set_title(
        title or f"{topology.name or topology.source}: {n} agents, {len(topology.edges)} edges"
    )
    ax.set_aspect("equal")
    ax.margins(0.12)
    ax.set_axis_off()
    out = Path(png_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out
