"""Uplink: batches of spooled records as SenML-CBOR, published with MQTT QoS 1. Outbox rows are
released only after the broker's PUBACK; a lost connection leaves them for the next attempt."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from urllib.parse import urlparse

import aiomqtt
import cbor2
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ..errors import FatalError
from .spool import Spool

log = logging.getLogger("sensorcity.gateway.uplink")


@dataclass
class Broker:
    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> "Broker":
        u = urlparse(url if "://" in url else f"mqtt://{url}")
        if u.scheme not in ("mqtt", "mqtts") or not u.hostname:
            raise FatalError(f"broker {url!r}: use mqtt://HOST:PORT or mqtts://HOST:PORT")
        tls = u.scheme == "mqtts"
        return cls(u.hostname, u.port or (8883 if tls else 1883), tls, u.username, u.password)


class Uplink:
    def __init__(self, spool: Spool, brokers: list[Broker], gateway_id: str, prefix: str,
                 batch_max: int = 200, batch_age: float = 1.0, mqtt_version: int = 5):
        self.spool = spool
        self.brokers = brokers
        self.gateway_id = gateway_id
        self.topic = f"{prefix}/{gateway_id}/batch"
        self.status_topic = f"{prefix}/{gateway_id}/status"
        self.batch_max = batch_max
        self.batch_age = batch_age
        self.version = (aiomqtt.ProtocolVersion.V5 if mqtt_version == 5
                        else aiomqtt.ProtocolVersion.V311)
        self.wake = asyncio.Event()
        self.published_batches = 0
        self.published_readings = 0
        self.connected = False
        self.on_published = None  # callback(rows) for metrics and latency

    def _client(self, broker: Broker) -> aiomqtt.Client:
        props = None
        if self.version == aiomqtt.ProtocolVersion.V5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 7 * 24 * 3600
        will = aiomqtt.Will(self.status_topic, b"offline", qos=1, retain=True)
        tls = None
        if broker.tls:
            tls = aiomqtt.TLSParameters()
        return aiomqtt.Client(
            broker.host, broker.port, identifier=f"sensorcity-{self.gateway_id}",
            protocol=self.version, will=will, properties=props, tls_params=tls,
            username=broker.username, password=broker.password, keepalive=30,
            clean_session=None if self.version == aiomqtt.ProtocolVersion.V5 else False,
            clean_start=False if self.version == aiomqtt.ProtocolVersion.V5 else 3,
            timeout=10)

    async def run(self):
        backoff = 0.5
        index = 0
        while True:
            broker = self.brokers[index % len(self.brokers)]
            try:
                async with self._client(broker) as client:
                    self.connected = True
                    backoff = 0.5
                    log.info("connected to %s:%d", broker.host, broker.port)
                    await client.publish(self.status_topic, b"online", qos=1, retain=True)
                    await self._publish_loop(client)
            except aiomqtt.MqttError as exc:
                log.warning("broker %s:%d: %s", broker.host, broker.port, exc)
            finally:
                self.connected = False
            index += 1
            await asyncio.sleep(backoff * random.uniform(0.5, 1.5))  # jitter
            backoff = min(backoff * 2, 30)

    async def _publish_loop(self, client: aiomqtt.Client):
        while True:
            rows = await asyncio.to_thread(self.spool.oldest, self.batch_max)
            if not rows:
                self.wake.clear()
                try:
                    await asyncio.wait_for(self.wake.wait(), timeout=5)
                except asyncio.TimeoutError:
                    pass
                continue
            age = time.time() - rows[0][3]
            if len(rows) < self.batch_max and age < self.batch_age:
                await asyncio.sleep(self.batch_age - age)
                continue
            payload, batch_id, readings = self.batch(rows)
            props = None
            if self.version == aiomqtt.ProtocolVersion.V5:
                props = Properties(PacketTypes.PUBLISH)
                props.UserProperty = [("batch_id", batch_id)]
                props.ContentType = "application/senml+cbor"
            await client.publish(self.topic, payload, qos=1, properties=props, timeout=30)
            await asyncio.to_thread(self.spool.release, [r[0] for r in rows])
            self.published_batches += 1
            self.published_readings += readings
            if self.on_published:
                self.on_published(rows)

    def batch(self, rows) -> tuple[bytes, str, int]:
        """One SenML pack of the rows' records; each frame's records keep their base name/time."""
        records = []
        for row in rows:
            records.extend(cbor2.loads(row[4]))
        batch_id = f"{self.gateway_id}:{rows[0][0]}-{rows[-1][0]}"
        return cbor2.dumps(records), batch_id, sum(r[5] for r in rows)
