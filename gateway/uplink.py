"""Uplink: batches of spooled records as SenML-CBOR, published with MQTT 5 QoS 1 on a persistent
session. Outbox rows are released only after the broker's PUBACK; a lost connection leaves them
for the next attempt, on the next broker of the list.

A backlog (more than one batch waiting) drains oldest first at full speed, and never starves
live data: the id of the newest row when the backlog is found is its mark; each round publishes
the oldest batch at or below the mark and, beside it, the oldest rows above the mark (live data)
once they are batch_age old. So live readings keep their latency while history catches up.

A PUBACK is a delivery only when its MQTT 5 reason code is a success: a refusal (0x87 not
authorized, 0x97 quota exceeded, ...) keeps the rows, is counted by reason and retried after a
backoff. A connection that stops answering is found by MQTT keepalive (paho's PINGREQ), even
with nothing to publish, and the uplink reconnects and subscribes again.

A broker may PUBACK and then forget (mosquitto saves its store after the PUBACK, so a kill -9
in between loses the message, and it may still have our session, saved earlier;
docs/durability.md). So the batches acked in the `replay_window` seconds before the latest ack
are kept in memory and re-sent on the next connection whenever one was lost: duplicates at
worst, which the backend upserts."""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import ssl
import time
from dataclasses import dataclass, field

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from ..errors import FatalError
from ..protocol import senml
from .config import Broker, Config
from .spool import Spool

__all__ = ["Broker", "PublishRefused", "Uplink", "UplinkStats", "tls_context"]
log = logging.getLogger("sensorcity.gateway.uplink")
BACKOFF_MIN, BACKOFF_MAX = 0.5, 30.0
STABLE = 10.0          # a connection that lasted this long resets the backoff
REPLIES_MAX = 1000
REPLAY_MAX = 20000     # frames kept for a replay at most (their packs: ~10 MB at most)
# a batch's PUBLISH beyond its payload, its topic and the gateway id in batch_id, at most: fixed
# header 5, topic length 2, packet id 2, properties 4 + content type 25 + batch_id 13 + 42 digits
PUBLISH_OVERHEAD = 100


def tls_context(cfg: Config) -> ssl.SSLContext:
    """Verify the broker against ca (or the system's CAs), present cert/key if given."""
    try:
        ctx = ssl.create_default_context(cafile=cfg.ca or None)
        if cfg.cert:
            ctx.load_cert_chain(cfg.cert, cfg.key)
    except (OSError, ssl.SSLError) as exc:
        raise FatalError(f"TLS files (ca {cfg.ca or 'system'}, cert {cfg.cert or 'none'}): "
                         f"{exc}") from exc
    return ctx


class PublishRefused(aiomqtt.MqttError):
    """The broker answered a publish with a failure reason code: it has not taken the message."""

    def __init__(self, reason: ReasonCode):
        super().__init__(f"refused with reason code {reason.value:#04x} ({reason})")
        self.reason = reason


class Client(aiomqtt.Client):
    """aiomqtt resolves a QoS 1 publish on any PUBACK, whatever its reason code (paho issues
    #474, #895). paho's v2 on_publish callback does hand over the code; this client keeps it
    for `publish_checked`, which raises PublishRefused on a failure code."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._acks: dict[int, asyncio.Future] = {}
        self.max_packet: int | None = None  # the CONNACK's Maximum Packet Size (MQTT 5)

    def _on_connect(self, client, userdata, flags, reason_code, properties=None):
        # a PUBLISH over the broker's maximum is a protocol error: it drops the connection
        self.max_packet = getattr(properties, "MaximumPacketSize", None)
        super()._on_connect(client, userdata, flags, reason_code, properties)

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        ack = self._acks.pop(mid, None)
        if ack is not None and not ack.done():
            ack.set_result(reason_code)
        super()._on_publish(client, userdata, mid, reason_code, properties)

    async def publish_checked(self, topic: str, payload: bytes, *, retain: bool = False,
                              properties: Properties | None = None,
                              timeout: float = 30) -> ReasonCode | None:
        """QoS 1; returns the PUBACK's reason code (None for MQTT 3.1.1, which has none)."""
        ack = asyncio.get_running_loop().create_future()
        # the PUBACK is read on this loop, so it cannot come before the future is registered
        info = self._client.publish(topic, payload, 1, retain, properties)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")
        self._acks[info.mid] = ack
        try:
            reason = await asyncio.wait_for(ack, timeout)
        except asyncio.TimeoutError:
            raise aiomqtt.MqttError(f"no PUBACK within {timeout:g} s") from None
        finally:
            self._acks.pop(info.mid, None)
        if isinstance(reason, ReasonCode) and reason.is_failure:
            raise PublishRefused(reason)
        return reason if isinstance(reason, ReasonCode) else None


@dataclass(slots=True)
class UplinkStats:
    """The uplink's counters and state, for metrics, health and the status page. Brokers are
    named host:port: no user or password is held here."""
    brokers: list[str] = field(default_factory=list)  # the configured list, in order
    connected: bool = False
    broker: str | None = None            # host:port while connected
    tls: bool | None = None              # while connected
    connected_at: float | None = None    # wall clock
    last_puback: float | None = None     # wall clock, of the last batch the broker took
    # monotonic: the last batch published, or the last look that found nothing to send
    last_progress: float = field(default_factory=time.monotonic)
    in_flight: int = 0                   # batches awaiting a PUBACK
    published_batches: int = 0
    published_readings: int = 0
    backlog_batches: int = 0             # rounds sent while rows beyond them waited
    connects: int = 0
    failures: int = 0
    # batches the broker refused, by (PUBACK reason code, reason)
    refused: dict[tuple[str, str], int] = field(default_factory=dict)
    replayed_batches: int = 0            # acked batches re-sent after a lost connection
    replies_dropped: int = 0
    replies_refused: int = 0
    # why the uplink last failed, for the operator (the broker's words, no credentials), and when
    last_error: str | None = None
    last_error_at: float | None = None

    def failed(self, why: str) -> None:
        self.last_error, self.last_error_at = why[:200], time.time()


class Uplink:
    def __init__(self, spool: Spool, cfg: Config):
        self.spool = spool
        self.cfg = cfg
        self.brokers = cfg.broker_list()
        self.gateway_id = cfg.gateway_id
        base = f"{cfg.topic_prefix}/{cfg.gateway_id}"
        self.topic = f"{base}/batch"
        self.status_topic = f"{base}/status"
        self.cmd_topic = f"{base}/cmd/+"
        self.batch_max = cfg.batch_max
        self.batch_age = cfg.batch_age
        self.version = (aiomqtt.ProtocolVersion.V5 if cfg.mqtt_version == 5
                        else aiomqtt.ProtocolVersion.V311)
        self._tls = tls_context(cfg) if any(b.tls for b in self.brokers) else None
        self.wake = asyncio.Event()
        self.replies: asyncio.Queue = asyncio.Queue(REPLIES_MAX)
        self.client: Client | None = None
        self.session = asyncio.Event()       # set while connected
        self.on_message = None               # callback(topic, payload) for commands
        self.on_published = None             # callback(rows) for metrics and latency
        self.broker: Broker | None = None
        self._mark: int | None = None        # the last backlog row's id while one drains
        self.draining = False               # stopping: publish what is there, ignore batch_age
        self.stats = UplinkStats(brokers=[f"{b.host}:{b.port}" for b in self.brokers])
        self._lost = asyncio.Event()          # the message reader saw this connection end
        self.recent: collections.deque = collections.deque()  # (monotonic, payload, id, frames)
        self.recent_frames = 0
        self._refusal_backoff = BACKOFF_MIN
        self.overhead = PUBLISH_OVERHEAD + len(self.topic.encode()) + len(self.gateway_id.encode())
        self.rows_max = cfg.batch_max  # halved by a batch whose PUBACK did not come in time

    def _client(self, broker: Broker) -> Client:
        v5 = self.version == aiomqtt.ProtocolVersion.V5
        props = None
        if v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.cfg.session_expiry
        will = aiomqtt.Will(self.status_topic, b"offline", qos=1, retain=True)
        return Client(
            broker.host, broker.port, identifier=f"sensorcity-{self.gateway_id}",
            protocol=self.version, will=will, properties=props,
            tls_context=self._tls if broker.tls else None,
            username=broker.username, password=broker.password, keepalive=self.cfg.keepalive,
            clean_session=None if v5 else False, clean_start=False if v5 else 3,
            max_inflight_messages=20, timeout=10)

    async def run(self):
        backoff = BACKOFF_MIN
        index = 0
        while True:
            broker = self.brokers[index % len(self.brokers)]
            began = time.monotonic()
            try:
                async with self._client(broker) as client:
                    self.broker, self.client = broker, client
                    st = self.stats
                    st.connected, st.broker, st.tls = True, f"{broker.host}:{broker.port}", \
                        bool(broker.tls)
                    st.connects += 1
                    st.connected_at = time.time()
                    self._mark = None
                    self._lost.clear()
                    log.info("connected to %s:%d%s", broker.host, broker.port,
                             " (TLS)" if broker.tls else "")
                    await self._until_lost(self._session(client))
            except aiomqtt.MqttError as exc:
                self.stats.failures += 1
                self.stats.failed(f"{broker.host}:{broker.port}: {exc}")
                log.warning("broker %s:%d: %s", broker.host, broker.port, exc)
            finally:
                self.stats.connected = False
                self.client = None
                self.session.clear()
            if time.monotonic() - began > STABLE:
                backoff = BACKOFF_MIN
            index += 1
            await asyncio.sleep(backoff * random.uniform(0.5, 1.5))  # jitter: no thundering herd
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _session(self, client: Client) -> None:
        # MQTT 5: retain-as-published, so a command published retained is seen as such even
        # while we are subscribed (commands.py refuses it)
        options = SubscribeOptions(qos=1, retainAsPublished=True) \
            if self.version == aiomqtt.ProtocolVersion.V5 else None
        if options:
            await client.subscribe(self.cmd_topic, options=options)
        else:
            await client.subscribe(self.cmd_topic, qos=1)
        self.session.set()
        await client.publish(self.status_topic, b"online", qos=1, retain=True)
        await self._replay(client)
        await self._publish_loop(client)

    def _remember(self, payload: bytes, batch_id: str, frames: int) -> None:
        """Kept: the batches acked within replay_window before the latest ack (the broker was
        alive then; what it may lose is what it acked just before it died)."""
        now = time.monotonic()
        self.recent.append((now, payload, batch_id, frames))
        self.recent_frames += frames
        while self.recent and (self.recent[0][0] < now - self.cfg.replay_window or
                               self.recent_frames > REPLAY_MAX):
            self.recent_frames -= self.recent.popleft()[3]

    def _forget(self, batch_id: str) -> None:
        for entry in list(self.recent):
            if entry[2] == batch_id:
                self.recent.remove(entry)
                self.recent_frames -= entry[3]

    async def _replay(self, client: Client) -> None:
        """A connection was lost: what a broker acked just before may have died with it."""
        if not self.recent:
            return
        log.info("re-sending to %s:%d the %d batches (%d frames) acknowledged in the %g s "
                 "before the connection was lost (a broker may ack and then forget)",
                 self.broker.host, self.broker.port, len(self.recent), self.recent_frames,
                 self.cfg.replay_window)
        for _, payload, batch_id, _ in list(self.recent):
            if client.max_packet and len(payload) + self.overhead > client.max_packet:
                log.warning("replay of batch %s: %d bytes, over this broker's maximum packet "
                            "size %d; not sent", batch_id, len(payload), client.max_packet)
                continue
            try:
                await client.publish_checked(self.topic, payload,
                                             properties=self._props(batch_id))
            except PublishRefused as exc:
                log.warning("replay of batch %s %s; not retried", batch_id, exc)
                continue
            except BaseException:  # no PUBACK (too slow, or over a size limit MQTT 3.1.1
                # cannot name, which drops the connection): not replayed at every connection
                # before anything new could go
                log.warning("replay of batch %s: no PUBACK; not replayed again", batch_id)
                self._forget(batch_id)
                raise
            self.stats.replayed_batches += 1

    async def _until_lost(self, work) -> None:
        """Run the session until it ends or the connection is found dead (keepalive: paho
        closes it when a PINGREQ goes unanswered; the message reader then sets _lost)."""
        task = asyncio.ensure_future(work)
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            await asyncio.wait({task, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (task, lost):
                t.cancel()
            await asyncio.gather(task, lost, return_exceptions=True)
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()
        raise aiomqtt.MqttError(f"connection lost (no answer within keepalive "
                                f"{self.cfg.keepalive} s, or closed)")

    async def messages(self):
        """Commands from the broker, for the life of the service (one task, across reconnects)."""
        while True:
            await self.session.wait()
            client = self.client
            if client is None:
                await asyncio.sleep(0.1)
                continue
            try:
                async for msg in client.messages:
                    if self.on_message:
                        try:
                            self.on_message(str(msg.topic), bytes(msg.payload or b""),
                                            bool(msg.retain))
                        except Exception:  # a bad message must not end the service
                            log.exception("command on %s", msg.topic)
            except aiomqtt.MqttError:
                if client is self.client:
                    self._lost.set()   # the connection is gone: the uplink reconnects
            while self.client is client:
                await asyncio.sleep(0.1)  # until the uplink has left this connection

    def poke(self) -> None:
        """Something new in the spool: look now."""
        self.wake.set()

    def drain(self) -> None:
        """Stopping: publish what is there at once, batch_age or not."""
        self.draining = True
        self.wake.set()

    def reply(self, topic: str, payload: bytes) -> None:
        """Queue a small message (a command's ack); the oldest is dropped when full."""
        if self.replies.full():
            self.replies.get_nowait()
            self.stats.replies_dropped += 1
        self.replies.put_nowait((topic, payload))
        self.wake.set()

    def _props(self, batch_id: str) -> Properties | None:
        if self.version != aiomqtt.ProtocolVersion.V5:
            return None
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = [("batch_id", batch_id)]
        props.ContentType = "application/senml+cbor"
        return props

    async def _send_replies(self, client: Client) -> None:
        while not self.replies.empty():
            topic, payload = self.replies.get_nowait()
            try:
                await client.publish_checked(topic, payload)
            except PublishRefused as exc:  # an ack is not data: counted, logged, not retried
                self.stats.replies_refused += 1
                log.warning("reply on %s %s", topic, exc)

    async def _publish_loop(self, client: Client):
        while True:
            await self._send_replies(client)
            self.wake.clear()  # before looking: a commit from now on wakes the next wait
            oldest, live = await asyncio.to_thread(self.next_round)
            if not oldest:
                self.stats.last_progress = time.monotonic()  # nothing to send counts as progress
                await self._idle(5)
                continue
            now = time.time()
            if self._mark is None:
                age = now - oldest[0].received
                if len(oldest) < self.batch_max and age < self.batch_age and not self.draining:
                    await self._idle(self.batch_age - age)
                    continue
                if not await self._publish(client, oldest):
                    await self._back_off()
                continue
            # a backlog: its oldest batch at once, and live rows once they are batch_age old
            if live and not (now - live[0].received >= self.batch_age or
                             len(live) >= self.batch_max or self.draining):
                live = []
            self.stats.backlog_batches += 1
            results = await asyncio.gather(
                self._publish(client, oldest), *([self._publish(client, live)] if live else []),
                return_exceptions=True)
            for r in results:
                if isinstance(r, BaseException):
                    raise r
            if not all(results):
                await self._back_off()

    async def _back_off(self) -> None:
        """After a refusal: the rows stay, the next try waits 0.5 s doubling to 30 s."""
        await asyncio.sleep(self._refusal_backoff * random.uniform(0.5, 1.5))
        self._refusal_backoff = min(self._refusal_backoff * 2, BACKOFF_MAX)

    async def _idle(self, seconds: float) -> None:
        if self.replies.empty():
            try:
                await asyncio.wait_for(self.wake.wait(), timeout=max(seconds, 0.01))
            except asyncio.TimeoutError:
                pass

    def next_round(self) -> tuple[list, list]:
        """The oldest batch, and, while a backlog drains, the oldest live rows: those that came
        after the backlog was found (ids above its mark). Both lanes go in id order."""
        oldest = self.spool.oldest(self.batch_max)
        if self._mark is None:
            if len(oldest) < self.batch_max:
                return oldest, []
            mark = self.spool.newest_id()
            if mark <= oldest[-1].id:
                return oldest, []   # exactly one batch waits: no backlog
            self._mark = mark
            log.info("draining a backlog of rows up to id %d", mark)
        backlog = [r for r in oldest if r.id <= self._mark]
        if not backlog:
            self._mark = None       # drained: one lane again
            return oldest, []
        return backlog, self.spool.oldest(self.batch_max, after=self._mark)

    def fit(self, client: Client, rows: list) -> list:
        """The first rows (at most rows_max) whose batch fits the broker's Maximum Packet Size
        (at least one: a frame is at most 1024 bytes, so only an absurd limit refuses one; that
        connection drops and the next broker of the list is tried). The rest go in the next
        round."""
        rows = rows[:self.rows_max]
        if not client.max_packet or len(rows) < 2:
            return rows
        room = client.max_packet - self.overhead - 9  # 9: the largest array head
        for n, row in enumerate(rows):
            room -= len(row.pack)  # a pack's own array head more than its records' bytes
            if room < 0:
                return rows[:max(n, 1)]
        return rows

    async def _publish(self, client: Client, rows) -> bool:
        """True when the broker took the batch (and its rows are released)."""
        rows = self.fit(client, rows)
        # a scan of every row's bytes (and, rarely, a quarantine): in a worker thread
        payload, batch_id, readings = await asyncio.to_thread(self.batch, rows)
        if payload is None:
            return True  # every row was quarantined: nothing to send
        self.stats.in_flight += 1
        try:
            await client.publish_checked(self.topic, payload, properties=self._props(batch_id))
        except PublishRefused as exc:
            key = (f"{exc.reason.value:#04x}", str(exc.reason))
            refused = self.stats.refused
            refused[key] = refused.get(key, 0) + 1
            self.stats.failed(f"batch refused: {exc.reason} ({key[0]})")
            log.warning("batch %s (%d readings) %s; kept in the spool, retried after a backoff",
                        batch_id, readings, exc)
            return False
        except BaseException:  # no PUBACK: a link too slow for this batch in the wait, or a
            # size limit MQTT 3.1.1 cannot name (the broker drops the connection), or a lost
            # connection: the next batch is half as long (one frame: 1024 bytes at most)
            self.rows_max = max(1, len(rows) // 2)
            raise
        finally:
            self.stats.in_flight -= 1
        self._refusal_backoff = BACKOFF_MIN
        self.rows_max = min(self.batch_max, 2 * self.rows_max)
        # a PUBACK that accepts: only now may the rows go
        await asyncio.to_thread(self.spool.release, [r.id for r in rows])
        if self.cfg.replay_window:
            self._remember(payload, batch_id, len(rows))
        self.stats.published_batches += 1
        self.stats.published_readings += readings
        self.stats.last_progress = time.monotonic()
        self.stats.last_puback = time.time()
        if self.on_published:
            self.on_published(rows)
        return True

    async def goodbye(self) -> None:
        """On a clean stop: the retained status says offline (a will is only sent on a crash)."""
        client = self.client
        if client is not None:
            try:
                await client.publish(self.status_topic, b"offline", qos=1, retain=True,
                                     timeout=2)
            except (aiomqtt.MqttError, asyncio.TimeoutError):
                pass

    def batch(self, rows) -> tuple[bytes | None, str, int]:
        """One SenML pack of the rows' records; each frame's records keep their base name/time.
        Made of the records' bytes as verify encoded them (one array head for them all): no
        pack is decoded or encoded again here; one that is no longer well-formed is left out."""
        parts, bad, count = [], [], 0
        for row in rows:
            span = senml.pack_span(row.pack)
            if span is None:  # a damaged row: quarantined, it never blocks the rows behind it
                bad.append(row.id)
                continue
            count += span[0]
            parts.append(memoryview(row.pack)[span[1]:])
        if bad:  # rare: a short transaction
            self.spool.quarantine(bad, "pack does not decode")
        batch_id = f"{self.gateway_id}:{rows[0].id}-{rows[-1].id}"
        if not parts and bad:
            return None, batch_id, 0
        return (senml.array_head(count) + b"".join(parts), batch_id,
                sum(r.readings for r in rows if r.id not in bad))
