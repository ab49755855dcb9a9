"""The control seqs the gateway keeps in its spool (gateway/control.py): they survive a salvage
of a damaged file, and a spool that refuses to write them costs durability, never the frame."""

import asyncio
import sqlite3

from sensorcity.gateway.control import ControlSeqs
from sensorcity.gateway.spool import Spool


def test_control_seqs_survive_a_salvage(tmp_path):
    spool = Spool(tmp_path)
    spool.save_control({"n1": 7, "n2": 3})
    spool.save_control({"n1": 5})  # never lowered
    spool.salvage("a test")
    assert spool.control_seqs() == {"n1": 7, "n2": 3}
    spool.close()
    assert Spool(tmp_path).control_seqs() == {"n1": 7, "n2": 3}


def test_a_refused_write_is_counted_and_the_frame_goes_on(tmp_path):
    spool = Spool(tmp_path)
    control = ControlSeqs(spool)

    def refuse(seqs):
        raise sqlite3.OperationalError("attempt to write a readonly database")
    spool.save_control = refuse

    async def main():
        await asyncio.wait_for(asyncio.gather(control.save("n1", 4), control.save("n2", 9)), 10)
    asyncio.run(main())
    assert control.failures >= 1 and control.durable == {}
    assert Spool(tmp_path).control_seqs() == {}
