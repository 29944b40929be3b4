"""tools/xmpp_server.py's ejabberd cluster without a server: the nodes `start --nodes N` plans,
what it refuses, and how each node's VM and ejabberdctl find the others (the private epmd, the
shared cookie). The cluster itself runs in tests/integration/test_xmpp_server.py."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

from tests.unit.files import ROOT, load_file

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def tool() -> ModuleType:
    return load_file(ROOT / "tools" / "xmpp_server.py", "xmpp_server_tool")


def _args(tool: ModuleType, tmp_path: Path, *extra: str) -> object:
    return tool.parser().parse_args(["start", "--name", "c", "--dir", str(tmp_path), *extra])


def test_a_cluster_is_nodes_on_ports_counted_up(tool: ModuleType, tmp_path: Path) -> None:
    port = tool.free_ports(6)
    http = port + 3
    nodes = tool.cluster_nodes(_args(tool, tmp_path, "--nodes", "3", "--port", str(port),
                                     "--http-port", str(http), "--no-mam"))  # fmt: skip
    assert [n.name for n in nodes] == ["c1", "c2", "c3"]
    assert [n.port for n in nodes] == [port, port + 1, port + 2]
    assert [n.http_port for n in nodes] == [http, http + 1, http + 2]
    assert all(Path(n.dir) == tmp_path / "c" / n.name and not n.mam for n in nodes)


@pytest.mark.parametrize(
    ("extra", "why"),
    [
        (["--kind", "prosody"], "only ejabberd clusters"),
        (["--tls"], "plain c2s"),
        (["--port", "15222", "--http-port", "15223"], "overlap"),
        (["--nodes", "0"], "between 1 and 64"),
    ],
)
def test_what_a_cluster_refuses(
    tool: ModuleType, tmp_path: Path, extra: list[str], why: str
) -> None:
    nodes = ["--nodes", "3"] if "--nodes" not in extra else []
    with pytest.raises(tool.ServerError, match=why):
        tool.cluster_nodes(_args(tool, tmp_path, *nodes, *extra))


def test_a_cluster_node_finds_the_others_through_the_clusters_epmd(
    tool: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tool, "ejabberd_libs", lambda: "/usr/lib/x")
    monkeypatch.setattr(tool, "_owner", lambda kind: None)
    alone = tool.Instance("one", str(tmp_path / "one"), "127.0.0.1", 5222, 5280, 4370, "localhost")
    alone.path.mkdir()
    argv = tool.ejabberd_launch(alone).argv
    assert argv[argv.index("-erl_epmd_port") + 1] == "4370"  # one server: no epmd, as before
    node = tool.Instance("c2", str(tmp_path / "c2"), "127.0.0.1", 5223, 5281, 4371, "localhost",
                         cluster="c", epmd_port=4400, cookie="sesame")  # fmt: skip
    node.path.mkdir()
    launch = tool.ejabberd_launch(node)
    assert "-erl_epmd_port" not in launch.argv and launch.env["ERL_EPMD_PORT"] == "4400"
    assert launch.argv[launch.argv.index("inet_dist_listen_min") + 1] == "4371"
    assert launch.argv[launch.argv.index("-setcookie") + 1] == "sesame"
    assert launch.argv[launch.argv.index("-name") + 1] == "amoc_c2@127.0.0.1"
    # A starved node is slow, not dead: no split of the cluster after a minute of no ticks.
    assert launch.argv[launch.argv.index("net_ticktime") + 1] == "600"
    assert launch.argv[launch.argv.index("prevent_overlapping_partitions") + 1] == "false"
    assert "net_ticktime" not in argv  # one server alone has no peers
    cfg = (node.path / "ctl" / "ejabberdctl.cfg").read_text()
    assert "ERLANG_NODE=amoc_c2@127.0.0.1\n" in cfg and "export ERL_EPMD_PORT=4400\n" in cfg
    assert 'ERL_OPTIONS="-setcookie sesame -kernel net_ticktime 600"' in cfg
    assert (node.path / "ctl" / "inetrc").read_text() == "{lookup, [file, native]}.\n"


def test_no_offline_leaves_offline_storage_out(
    tool: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tool, "ejabberd_libs", lambda: "/usr/lib/x")
    monkeypatch.setattr(tool, "_owner", lambda kind: None)
    for offline in (True, False):
        inst = tool.Instance(f"o{offline}", str(tmp_path / f"o{offline}"), "127.0.0.1", 5222,
                             5280, 4370, "localhost", offline=offline)  # fmt: skip
        inst.path.mkdir()
        tool.ejabberd_launch(inst)
        config = (inst.path / "ejabberd.yml").read_text()
        assert ("  mod_offline:\n" in config) is offline
        assert "  mod_register:\n" in config
