"""Tests for p2pmarl.topology: formats, label mapping, addresses, errors, stats, drawing."""

from __future__ import annotations

import json
import math
from pathlib import Path

import networkx as nx
import pytest

from p2pmarl.topology import (
    GENERATORS,
    Topology,
    TopologyError,
    agent_order,
    describe,
    draw_topology,
    format_description,
    load_topology,
    topology_from_graph,
    topology_from_spec,
)

TOPOLOGY_DIR = Path(__file__).resolve().parents[1] / "topologies"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_error(path: Path, **kwargs) -> str:
    """Load ``path`` expecting a TopologyError that names the file; return the message."""
    with pytest.raises(TopologyError) as info:
        load_topology(path, **kwargs)
    message = str(info.value)
    assert path.name in message
    assert "Fix:" in message
    return message


# ------------------------------------------------------------------------------------------
# Formats
# ------------------------------------------------------------------------------------------


def test_yaml_generator_spec(tmp_path: Path) -> None:
    t = load_topology(write(tmp_path, "r.yaml", "generator: ring\nn: 5\nname: five\n"))
    assert isinstance(t, Topology)
    assert t.n_agents == 5
    assert t.edges == ((0, 1), (0, 4), (1, 2), (2, 3), (3, 4))
    assert t.labels == ("0", "1", "2", "3", "4")
    assert t.name == "five"
    assert t.source.endswith("r.yaml")
    assert t.addresses == {}
    assert t.neighbours(0) == (1, 4)
    assert t.degree(3) == 2
    assert t.is_connected()


def test_yml_extension_and_aliases(tmp_path: Path) -> None:
    cyc = load_topology(write(tmp_path, "c.yml", "generator: cycle\nn: 4\n"))
    path = load_topology(write(tmp_path, "p.yml", "generator: path\nn: 4\n"))
    assert cyc.edges == ((0, 1), (0, 3), (1, 2), (2, 3))
    assert path.edges == ((0, 1), (1, 2), (2, 3))
    assert cyc.name == "c"  # defaults to the file stem


def test_json_spec(tmp_path: Path) -> None:
    spec = {"generator": "star", "n": 4}
    t = load_topology(write(tmp_path, "s.json", json.dumps(spec)))
    assert t.edges == ((0, 1), (0, 2), (0, 3))
    explicit = {"edges": [[0, 1], [1, 2]], "nodes": [0, 1, 2, 3]}
    t2 = load_topology(write(tmp_path, "e.json", json.dumps(explicit)))
    assert t2.n_agents == 4 and t2.degree(3) == 0


def test_yaml_explicit_edges_with_isolated_node(tmp_path: Path) -> None:
    text = "edges: [[a, b], [b, c], [c, a], [c, b]]\nnodes: [a, b, c, z]\n"
    t = load_topology(write(tmp_path, "e.yaml", text))
    assert t.labels == ("a", "b", "c", "z")
    assert t.edges == ((0, 1), (0, 2), (1, 2))  # duplicate c-b merged
    assert t.neighbours(3) == ()
    assert not t.is_connected()


def test_node_link_json_links_and_edges_keys(tmp_path: Path) -> None:
    g = nx.path_graph(["x", "y", "z"])
    data = {
        "directed": False,
        "multigraph": False,
        "graph": {},
        "nodes": [{"id": n} for n in g.nodes],
        "links": [{"source": u, "target": v} for u, v in g.edges],
    }
    t = load_topology(write(tmp_path, "nl.json", json.dumps(data)))
    assert t.labels == ("x", "y", "z") and t.edges == ((0, 1), (1, 2))
    data["edges"] = data.pop("links")
    t2 = load_topology(write(tmp_path, "nl2.json", json.dumps(data)))
    assert t2.edges == t.edges


def test_graphml_with_string_labels_and_addresses(tmp_path: Path) -> None:
    g = nx.Graph(name="gm")
    for i, label in enumerate(["bob", "alice", "carol"]):
        g.add_node(label, host="127.0.0.1", port=7000 + i)
    g.add_edges_from([("alice", "bob"), ("bob", "carol")])
    path = tmp_path / "g.graphml"
    nx.write_graphml(g, path)
    t = load_topology(path)
    assert t.labels == ("alice", "bob", "carol")
    assert t.edges == ((0, 1), (1, 2))
    assert t.addresses == {0: ("127.0.0.1", 7001), 1: ("127.0.0.1", 7000), 2: ("127.0.0.1", 7002)}
    assert t.name == "gm"
    assert t.graph.nodes[0] == {"label": "alice", "host": "127.0.0.1", "port": 7001}


def test_gml_uses_labels_and_address_attribute(tmp_path: Path) -> None:
    text = """graph [
      node [ id 0 label "n2" address "10.0.0.1:6000" ]
      node [ id 1 label "n10" address "10.0.0.1:6001" ]
      node [ id 2 label "n1" address "[::1]:6002" ]
      edge [ source 0 target 1 ]
      edge [ source 1 target 2 ]
    ]"""
    t = load_topology(write(tmp_path, "g.gml", text))
    assert t.labels == ("n1", "n10", "n2")  # non-numeric labels sort by str
    assert t.addresses[0] == ("::1", 6002)
    assert t.edges == ((0, 1), (1, 2))


def test_gml_without_labels_uses_ids(tmp_path: Path) -> None:
    text = "graph [ node [ id 3 ] node [ id 1 ] edge [ source 3 target 1 ] ]"
    t = load_topology(write(tmp_path, "ids.gml", text))
    assert t.labels == ("1", "3") and t.edges == ((0, 1),)


def test_edgelist_numeric_labels_sort_numerically(tmp_path: Path) -> None:
    text = "# comment\n10 2\n2 1\n1 10 {'weight': 3}\n"
    t = load_topology(write(tmp_path, "g.edgelist", text))
    assert t.labels == ("1", "2", "10")
    assert t.edges == ((0, 1), (0, 2), (1, 2))


def test_adjlist(tmp_path: Path) -> None:
    t = load_topology(write(tmp_path, "g.adjlist", "0 1 2\n1 2\n3 0\n"))
    assert t.n_agents == 4
    assert t.neighbours(0) == (1, 2, 3)


def test_directed_and_multigraph_inputs_are_collapsed(tmp_path: Path) -> None:
    g = nx.MultiDiGraph()
    g.add_edges_from([(0, 1), (1, 0), (0, 1), (1, 2)])
    path = tmp_path / "m.graphml"
    nx.write_graphml(g, path)
    t = load_topology(path)
    assert t.edges == ((0, 1), (1, 2))
    assert type(t.graph) is nx.Graph


def test_grid_generator_row_major(tmp_path: Path) -> None:
    t = load_topology(write(tmp_path, "g.yaml", "generator: grid\nrows: 2\ncols: 3\n"))
    assert t.n_agents == 6
    assert t.neighbours(0) == (1, 3) and t.neighbours(4) == (1, 3, 5)
    same = load_topology(write(tmp_path, "g2.yaml", "generator: grid\nrows: 2\ncols: 3\nn: 6\n"))
    assert same.edges == t.edges


@pytest.mark.parametrize(
    "spec",
    [
        {"generator": "erdos_renyi", "n": 10, "p": 0.3},
        {"generator": "random_regular", "n": 10, "k": 3},
        {"generator": "watts_strogatz", "n": 10, "k": 4, "p": 0.3},
    ],
)
def test_random_generators_reproducible_by_seed(spec: dict) -> None:
    graphs = {
        s: [topology_from_spec({**spec, "seed": s}).edges for _ in range(2)] for s in range(4)
    }
    for first, second in graphs.values():
        assert first == second
    assert len({edges[0] for edges in graphs.values()}) > 1  # the seed matters


def test_node_link_round_trip_keeps_ids_edges_addresses(tmp_path: Path) -> None:
    t = load_topology(TOPOLOGY_DIR / "custom_edges.yaml")
    data = t.to_node_link()
    json.dumps(data)  # serialisable
    assert "edges" in data and "links" not in data
    back = load_topology(t.save_node_link(tmp_path / "sub" / "frozen.json"))
    assert back.edges == t.edges
    assert back.addresses == t.addresses
    assert back.name == t.name


def test_topology_from_graph_in_memory() -> None:
    t = topology_from_graph(
        nx.cycle_graph(["b", "a", "c"]), addresses={"a": "h:1", "b": "h:2", "c": "h:3"}
    )
    assert t.labels == ("a", "b", "c") and t.addresses[1] == ("h", 2)
    assert t.source == "<graph>"


def test_all_generators_buildable() -> None:
    params = {"p": 0.5, "k": 2, "rows": 2, "cols": 3}
    for gname, gen in GENERATORS.items():
        spec = {"generator": gname, "n": 6, "seed": 1, **{k: params[k] for k in gen.params}}
        if gname == "grid":
            del spec["n"]
        assert topology_from_spec(spec).n_agents == 6


# ------------------------------------------------------------------------------------------
# Label mapping
# ------------------------------------------------------------------------------------------


def test_agent_order_rules() -> None:
    assert agent_order([10, 2, 1]) == [1, 2, 10]
    assert agent_order(["10", "2", "01"]) == ["01", "2", "10"]
    assert agent_order([3, "12", "-1"]) == ["-1", 3, "12"]
    assert agent_order(["b", "a", "10", "9"]) == ["10", "9", "a", "b"]  # str order if any non-int


def test_mixed_labels_in_yaml_sort_by_str(tmp_path: Path) -> None:
    t = load_topology(write(tmp_path, "m.yaml", "edges: [[x, 10], [10, 9]]\n"))
    assert t.labels == ("10", "9", "x")


def test_colliding_labels_rejected(tmp_path: Path) -> None:
    msg = load_error(write(tmp_path, "col.yaml", "edges: [[1, '1'], [1, 2]]\n"))
    assert "distinct" in msg


# ------------------------------------------------------------------------------------------
# Addresses
# ------------------------------------------------------------------------------------------


def test_address_forms_in_yaml(tmp_path: Path) -> None:
    text = (
        "generator: line\nn: 3\naddresses:\n  0: 'localhost:5000'\n"
        "  '1': {host: 10.1.1.1, port: '5001'}\n  2: {host: 10.1.1.2, port: 5002}\n"
    )
    t = load_topology(write(tmp_path, "a.yaml", text))
    assert t.addresses == {0: ("localhost", 5000), 1: ("10.1.1.1", 5001), 2: ("10.1.1.2", 5002)}


@pytest.mark.parametrize(
    ("addresses", "fact"),
    [
        ("{0: 'h:0', 1: 'h:2'}", "invalid port 0"),
        ("{0: 'h:70000', 1: 'h:2'}", "invalid port 70000"),
        ("{0: 'h:abc', 1: 'h:2'}", "invalid port 'abc'"),
        ("{0: 'nohost', 1: 'h:2'}", "no ':port'"),
        ("{0: ':5000', 1: 'h:2'}", "invalid host"),
        ("{0: 'h:5000', 1: 'h:5000'}", "share the address h:5000"),
        ("{0: 'h:1'}", "missing: 1"),
        ("{0: 'h:1', 1: 'h:2', 7: 'h:3'}", "node '7'"),
        ("{0: {host: h}, 1: 'h:2'}", "host and port"),
        ("{0: 5000, 1: 'h:2'}", "address of node '0'"),
        ("[h:1, h:2]", "must be a mapping"),
    ],
)
def test_bad_addresses(tmp_path: Path, addresses: str, fact: str) -> None:
    path = write(tmp_path, "addr.yaml", f"generator: line\nn: 2\naddresses: {addresses}\n")
    assert fact in load_error(path)


def test_bad_port_attribute_in_graphml(tmp_path: Path) -> None:
    g = nx.Graph()
    g.add_node("a", host="127.0.0.1", port=99999)
    g.add_node("b", host="127.0.0.1", port=1)
    g.add_edge("a", "b")
    nx.write_graphml(g, tmp_path / "p.graphml")
    assert "invalid port 99999" in load_error(tmp_path / "p.graphml")


# ------------------------------------------------------------------------------------------
# Validation errors
# ------------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    assert "not found" in load_error(tmp_path / "nope.yaml")


def test_directory_is_rejected(tmp_path: Path) -> None:
    d = tmp_path / "dir.yaml"
    d.mkdir()
    assert "directory" in load_error(d)


@pytest.mark.parametrize("name", ["e.yaml", "e.json", "e.graphml", "e.gml", "e.edgelist"])
def test_empty_file(tmp_path: Path, name: str) -> None:
    assert "empty" in load_error(write(tmp_path, name, "  \n"))


def test_comment_only_yaml(tmp_path: Path) -> None:
    assert "only comments" in load_error(write(tmp_path, "c.yaml", "# nothing\n"))


def test_unsupported_extension(tmp_path: Path) -> None:
    msg = load_error(write(tmp_path, "g.txt", "0 1\n"))
    assert "'.txt'" in msg and ".graphml" in msg


@pytest.mark.parametrize(
    ("name", "text", "fmt"),
    [
        ("bad.yaml", "generator: [ring\n", "YAML"),
        ("bad.json", "{not json", "JSON"),
        ("bad.graphml", "<graphml><graph", "GraphML"),
        ("bad.gml", "graph [ node [ id 0 ", "GML"),
        ("bad.edgelist", "0 1 2\n", "edge list"),
    ],
)
def test_parse_errors(tmp_path: Path, name: str, text: str, fmt: str) -> None:
    msg = load_error(write(tmp_path, name, text))
    assert "could not parse" in msg and fmt in msg


def test_json_neither_spec_nor_node_link(tmp_path: Path) -> None:
    assert "node-link" in load_error(write(tmp_path, "x.json", '{"foo": 1}'))


def test_top_level_not_mapping(tmp_path: Path) -> None:
    assert "mapping" in load_error(write(tmp_path, "l.yaml", "- 1\n- 2\n"))


def test_fewer_than_two_nodes(tmp_path: Path) -> None:
    msg = load_error(write(tmp_path, "one.yaml", "edges: []\nnodes: [solo]\n"))
    assert "1 node(s)" in msg and "at least 2" in msg


def test_self_loop_names_node(tmp_path: Path) -> None:
    msg = load_error(write(tmp_path, "loop.edgelist", "a b\nb b\n"))
    assert "self-loop" in msg and "'b'" in msg


def test_disconnected_when_required(tmp_path: Path) -> None:
    path = write(tmp_path, "two.yaml", "edges: [[0, 1], [2, 3], [4, 5]]\n")
    assert not load_topology(path).is_connected()  # allowed by default
    msg = load_error(path, require_connected=True)
    assert "disconnected" in msg and "3 components" in msg
    assert "agent 0" in msg and "agent 2" in msg and "agent 4" in msg


def test_size_mismatch_names_both_numbers(tmp_path: Path) -> None:
    path = write(tmp_path, "ring3.yaml", "generator: ring\nn: 3\n")
    msg = load_error(path, expected_agents=4, env_name="spread")
    assert "ring3.yaml has 3 agents but environment 'spread' needs 4" in msg
    assert "has 3 agents but the run expects 5" in load_error(path, expected_agents=5)
    assert load_topology(path, expected_agents=3).n_agents == 3


@pytest.mark.parametrize(
    ("text", "facts"),
    [
        ("generator: ring\nn: 4\ncolour: red\n", ["unknown key 'colour'", "generator, n"]),
        ("generator: torus\nn: 4\n", ["unknown generator 'torus'", "watts_strogatz"]),
        ("generator: ring\n", ["needs 'n'"]),
        ("generator: ring\nn: 2\n", ["'n' for 'ring'", "line"]),
        ("generator: ring\nn: four\n", ["'n' for 'ring'"]),
        ("generator: ring\nn: 4\np: 0.1\n", ["'p' does not apply", "ring"]),
        ("generator: erdos_renyi\nn: 5\np: 0.5\n", ["no 'seed'"]),
        ("generator: erdos_renyi\nn: 5\nseed: 1\n", ["needs parameter 'p'"]),
        ("generator: erdos_renyi\nn: 5\np: 1.5\nseed: 1\n", ["probability", "1.5"]),
        ("generator: erdos_renyi\nn: 5\np: 0.5\nseed: x\n", ["'seed' must be an integer"]),
        ("generator: random_regular\nn: 5\nk: 3\nseed: 1\n", ["n*k even"]),
        ("generator: random_regular\nn: 4\nk: 4\nseed: 1\n", ["k < n"]),
        ("generator: watts_strogatz\nn: 8\nk: 3\np: 0.1\nseed: 1\n", ["even k"]),
        ("generator: grid\nrows: 2\ncols: 2\nn: 5\n", ["rows*cols", "4"]),
        ("generator: grid\nrows: 2\n", ["needs parameter 'cols'"]),
        ("generator: grid\nrows: 0\ncols: 3\n", ["positive integer"]),
        ("generator: ring\nn: 4\nedges: [[0, 1]]\n", ["both 'generator' and 'edges'"]),
        ("name: lonely\n", ["neither 'generator' nor 'edges'"]),
        ("edges: [[0, 1]]\nn: 2\n", ["key 'n' only applies"]),
        ("edges: [[0, 1, 2]]\n", ["edges[0]", "pair"]),
        ("edges: [[0, 1.5]]\n", ["1.5", "quote"]),
        ("edges: [[0, yes]]\n", ["True"]),
        ("edges: {0: 1}\n", ["'edges' must be a list"]),
        ("edges: [[0, 1], [1, 9]]\nnodes: [0, 1, 2]\n", ["node 9", "not in 'nodes'"]),
        ("edges: [[0, 1]]\nnodes: [0, 1, 1]\n", ["more than once"]),
        ("generator: ring\nn: 4\nname: 5\n", ["'name' must be a string"]),
    ],
)
def test_spec_errors(tmp_path: Path, text: str, facts: list[str]) -> None:
    msg = load_error(write(tmp_path, "spec.yaml", text))
    for fact in facts:
        assert fact in msg


# ------------------------------------------------------------------------------------------
# describe / format_description
# ------------------------------------------------------------------------------------------


def test_describe_ring6() -> None:
    d = describe(load_topology(TOPOLOGY_DIR / "ring6.yaml"))
    assert d["n_agents"] == 6 and d["n_edges"] == 6
    assert d["degrees"] == [2] * 6
    assert (d["min_degree"], d["max_degree"], d["mean_degree"]) == (2, 2, 2.0)
    assert d["connected"] and d["diameter"] == 3
    assert d["algebraic_connectivity"] == pytest.approx(2 - 2 * math.cos(2 * math.pi / 6))
    assert d["algebraic_connectivity"] == pytest.approx(1.0)
    json.dumps(d)


def test_describe_complete4_and_star() -> None:
    assert describe(load_topology(TOPOLOGY_DIR / "complete4.yaml"))[
        "algebraic_connectivity"
    ] == pytest.approx(4.0)
    star = describe(load_topology(TOPOLOGY_DIR / "star5.yaml"))
    assert star["degrees"] == [4, 1, 1, 1, 1] and star["diameter"] == 2
    assert star["algebraic_connectivity"] == pytest.approx(1.0)


def test_describe_disconnected() -> None:
    d = describe(topology_from_spec({"edges": [[0, 1], [2, 3]]}))
    assert not d["connected"] and d["diameter"] is None
    assert d["algebraic_connectivity"] == 0.0 and d["n_components"] == 2
    assert "WARNING" in format_description(d)


def test_format_description_mentions_key_numbers() -> None:
    text = format_description(describe(load_topology(TOPOLOGY_DIR / "ring6.yaml")))
    assert "ring6" in text and "agents                  6" in text
    assert "diameter                3" in text and "1.0000" in text


# ------------------------------------------------------------------------------------------
# Bundled topologies
# ------------------------------------------------------------------------------------------

BUNDLED = sorted(p for p in TOPOLOGY_DIR.iterdir() if p.suffix in {".yaml", ".yml", ".graphml"})


def test_bundled_set_is_complete() -> None:
    names = {p.name for p in BUNDLED}
    expected = {f"ring{n}.yaml" for n in (3, 6, 8, 12, 24)} | {
        "line4.yaml",
        "complete4.yaml",
        "complete6.yaml",
        "star5.yaml",
        "er8.yaml",
        "ws12.yaml",
        "custom_edges.yaml",
        "example.graphml",
    }
    assert expected <= names


@pytest.mark.parametrize("path", BUNDLED, ids=lambda p: p.name)
def test_bundled_topology_loads_connected(path: Path) -> None:
    t = load_topology(path, require_connected=True)
    assert t.n_agents >= 2
    if path.suffix == ".yaml":
        assert path.read_text(encoding="utf-8").startswith("# ")


def test_bundled_sizes() -> None:
    sizes = {p.stem: load_topology(p).n_agents for p in BUNDLED}
    assert sizes["ring24"] == 24 and sizes["er8"] == 8 and sizes["ws12"] == 12
    assert sizes["example"] == 5 and sizes["custom_edges"] == 6


# ------------------------------------------------------------------------------------------
# Drawing
# ------------------------------------------------------------------------------------------


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert len(data) > 1000
    assert data.startswith(PNG_MAGIC)


def test_draw_plain(tmp_path: Path) -> None:
    out = draw_topology(load_topology(TOPOLOGY_DIR / "ws12.yaml"), tmp_path / "a" / "ws.png")
    assert_png(out)


def test_draw_with_values_and_failures(tmp_path: Path) -> None:
    t = load_topology(TOPOLOGY_DIR / "ring8.yaml")
    values = {e: float(i) for i, e in enumerate(t.edges)}
    values[(7, 0)] = values.pop((0, 7))  # either orientation works
    out = draw_topology(
        t, tmp_path / "r.png", edge_values=values, failed_edges={(2, 1)}, title="ring8 disagreement"
    )
    assert_png(out)


def test_draw_constant_values(tmp_path: Path) -> None:
    t = load_topology(TOPOLOGY_DIR / "complete4.yaml")
    assert_png(draw_topology(t, tmp_path / "c.png", edge_values=dict.fromkeys(t.edges, 1.0)))


def test_draw_rejects_unknown_edge(tmp_path: Path) -> None:
    t = load_topology(TOPOLOGY_DIR / "ring6.yaml")
    with pytest.raises(ValueError, match="not an edge"):
        draw_topology(t, tmp_path / "x.png", failed_edges={(0, 3)})


def test_agent_id_checks() -> None:
    t = topology_from_spec({"generator": "ring", "n": 3})
    with pytest.raises(ValueError, match=r"0\.\.2"):
        t.neighbours(3)
    with pytest.raises(TypeError):
        t.degree("0")  # type: ignore[arg-type]
