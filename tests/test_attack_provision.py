"""The operator's `sensorcity provision --base-name`, then the gateway's name check
(docs/protocol.md: a key holder "cannot speak for another node"; "the name check keeps it inside
its own base name"). The check is a string prefix, and provision takes any base name."""

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from sensorcity.errors import FatalError
from sensorcity.gateway.config import Config
from sensorcity.gateway.ingest import Link
from sensorcity.gateway.registry import Registry
from sensorcity.gateway.service import Gateway
from sensorcity.protocol import frames
from sensorcity.tools.bench.provision import provision

pytestmark = pytest.mark.adversarial
SENSORCITY = Path(sys.executable).with_name("sensorcity")


def test_a_key_holder_cannot_write_under_another_nodes_base_name(tmp_path):
    """Two nodes whose base names are one a prefix of the other ("urn:dev:ops:pole1" without
    its trailing colon, "urn:dev:ops:pole12:"): provision takes both, and the thief holding
    pole1's key writes readings under pole12's name, accepted and spooled as pole12's data.
    Fixed: provision (and the registry, for a file written before) refuses such a pair; with
    pole1's base name ended by its separator, the forged name is outside it."""
    reg = tmp_path / "nodes.json"
    provision("pole12", "energy", reg, tmp_path / "b.json", base_name="urn:dev:ops:pole12:")
    for prefix in ("urn:dev:ops:pole1", "urn:dev:ops:"):
        with pytest.raises(FatalError, match="base name"):
            provision("pole1", "energy", reg, tmp_path / "a.json", base_name=prefix)
    old = json.loads(reg.read_text())  # a registry written before the check: refused at load
    for prefix in ("urn:dev:ops:pole1", "urn:dev:ops:"):
        old["nodes"]["pole1"] = dict(old["nodes"]["pole12"], base_name=prefix)
        (tmp_path / "old.json").write_text(json.dumps(old))
        with pytest.raises(FatalError, match="base name"):
            Registry.load(tmp_path / "old.json")
    thief = provision("pole1", "energy", reg, tmp_path / "a.json", base_name="urn:dev:ops:pole1:")
    gw = Gateway(Config(gateway_id="gw", brokers=["mqtt://127.0.0.1:9"], nodes=str(reg),
                        spool=str(tmp_path / "s"), metrics=""))
    forged = frames.encode(bytes.fromhex(thief["key"]), frames.DATA, "pole1", 1,
                           [{-2: "urn:dev:ops:pole12:", -3: 1795000000, 0: "power_import",
                             1: "W", 2: 99999}])

    async def scenario():
        task = asyncio.create_task(gw.commit.run())
        try:
            accepted = await gw.handle(Link("thief", lambda b: None), forged[:-1])
            await asyncio.wait_for(gw.commit.queue.join(), 10)
        finally:
            task.cancel()
        assert not accepted and gw.commit.stats.stored == 0, \
            "pole1's key wrote a reading named urn:dev:ops:pole12:power_import"
    asyncio.run(scenario())


def test_provision_refuses_a_base_name_no_frame_can_carry(tmp_path):
    """A base name with a space is outside SenML's name syntax (RFC 8428 section 4.5.1): the
    gateway rejects every frame of that node as `schema`. provision says "provisioned"."""
    r = subprocess.run([str(SENSORCITY), "provision", "--node-id", "n9", "--sensor", "energy",
                        "--base-name", "pole 9:", "--registry", str(tmp_path / "r.json"),
                        "--out", str(tmp_path / "n9.json")], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 2, (r.stdout + r.stderr).strip()
