"""Prometheus metrics: the gateway's own counters, read at scrape time (no second bookkeeping),
and a histogram of the latency from a frame's arrival to the broker's PUBACK of its batch."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

P = "sensorcity_gateway_"
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 1.5, 2, 3, 5, 10, 30, 60, 300, 3600)


class GatewayCollector:
    def __init__(self, gw):
        self.gw = gw

    def collect(self):
        gw = self.gw
        v, up, cmd = gw.verifier, gw.uplink, gw.commands

        def counter(name, doc, value):
            return CounterMetricFamily(P + name, doc, value=value)

        def gauge(name, doc, value):
            return GaugeMetricFamily(P + name, doc, value=value)

        yield counter("frames_accepted", "Frames that passed verification", v.accepted)
        rej = CounterMetricFamily(P + "frames_rejected", "Frames rejected, by reason",
                                  labels=["reason"])
        for reason, n in sorted(v.rejected.items()):
            rej.add_metric([reason], n)
        yield rej
        yield counter("frames_stored", "Data frames committed to the spool", gw.stored)
        yield counter("frames_duplicate", "Data frames seen before (re-sent), acked again",
                      gw.duplicates)
        sp = gw.spool.stats()
        yield gauge("spool_frames", "Frames in the spool not yet acknowledged by the broker",
                    sp["rows"])
        yield gauge("spool_readings", "Readings in the spool not yet acknowledged", sp["readings"])
        yield gauge("spool_used_bytes", "Bytes the spool's pages use", sp["used_bytes"])
        yield gauge("spool_budget_bytes", "The spool's disk budget", sp["budget_bytes"])
        for what in ("frames", "readings", "intervals"):
            yield counter(f"spool_dropped_{what}",
                          f"{what.capitalize()} dropped over the disk budget (oldest intervals)",
                          sp[f"dropped_{what}"])
        yield counter("spool_full", "Commits refused because the disk was full (not acked)",
                      gw.spool_full)
        yield counter("batches_published", "Batches acknowledged by the broker (PUBACK)",
                      up.published_batches)
        yield counter("readings_published", "Readings in acknowledged batches",
                      up.published_readings)
        yield counter("backlog_rounds", "Publish rounds that drained a backlog",
                      up.backlog_batches)
        yield gauge("uplink_connected", "1 while connected to a broker", int(up.connected))
        yield counter("uplink_connects", "Successful broker connections", up.connects)
        yield counter("uplink_failures", "Broker connections that failed or dropped",
                      up.failures)
        yield gauge("uplink_seconds_since_progress",
                    "Seconds since the uplink last published or found nothing to send",
                    time.monotonic() - up.last_progress)
        yield counter("commands_sent", "CMD frames sent to nodes (resends included)", cmd.sent)
        yield counter("commands_acked", "Commands a node acknowledged", cmd.acked_total)
        yield counter("commands_rejected", "Command requests refused (bad JSON, op, node)",
                      cmd.rejected)
        yield counter("commands_expired", "Commands given up after their time to live",
                      cmd.expired)
        yield gauge("commands_pending", "Commands waiting for a node's ack", len(cmd.pending))
        dl = gw.downlink.stats
        sent = CounterMetricFamily(P + "downlink_frames", "Frames sent to nodes, by kind",
                                   labels=["kind"])
        for kind, n in (("ack", dl.acks), ("time", dl.times), ("cmd", dl.commands)):
            sent.add_metric([kind], n)
        yield sent
        yield counter("downlink_blocks_reserved", "Blocks of downlink numbers made durable",
                      dl.blocks_reserved)
        yield counter("downlink_reserve_failures",
                      "Reservations of downlink numbers the spool could not write",
                      dl.reserve_failures)
        yield counter("downlink_unsent", "TIME/CMD frames dropped: no durable number for them",
                      dl.unsent)
        yield gauge("downlink_waiting", "TIME/CMD frames waiting for their number's reservation",
                    dl.waiting)
        families = {
            "bytes": (CounterMetricFamily, "link_bytes", "Bytes read from a link"),
            "frames": (CounterMetricFamily, "link_frames", "Delimited frames read from a link"),
            "rejected": (CounterMetricFamily, "link_rejected", "Frames from a link rejected"),
            "overflows": (CounterMetricFamily, "link_overflows",
                          "Runs longer than a frame dropped on a link (resync)"),
            "sessions": (CounterMetricFamily, "link_sessions", "Times a link was opened"),
            "open": (GaugeMetricFamily, "link_open", "Sessions open on a link"),
        }
        for attr, (kind, name, doc) in families.items():
            fam = kind(P + name, doc, labels=["link"])
            for link, stats in sorted(gw.ingest.stats.items()):
                fam.add_metric([link], getattr(stats, attr))
            yield fam
        ok, _ = gw.health()
        yield gauge("healthy", "1 when /healthz answers 200", int(ok))


class Metrics:
    def __init__(self, gw):
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(GatewayCollector(gw))
        self.latency = Histogram(P + "delivery_latency_seconds",
                                 "From a frame's arrival to the PUBACK of its batch",
                                 buckets=LATENCY_BUCKETS, registry=self.registry)

    def published(self, rows) -> None:
        now = time.time()
        for row in rows:
            self.latency.observe(max(0.0, now - row[3]))
