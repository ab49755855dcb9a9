"""An embedded MQTT broker for `sensorcity demo` on a machine without mosquitto: amqtt from PyPI.
It speaks MQTT 3.1.1 only, so the demo's gateway uses 3.1.1 with it (5 with --broker)."""

from __future__ import annotations

import asyncio
import logging
import socket


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def start_embedded(port: int):
    for name in ("amqtt", "transitions", "passlib"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    from amqtt.broker import Broker
    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        "sys_interval": 0,
        "auth": {"allow-anonymous": True, "plugins": ["auth_anonymous"]},
        "topic-check": {"enabled": False},
    }
    broker = Broker(config)
    await broker.start()
    await asyncio.sleep(0.2)
    return broker
