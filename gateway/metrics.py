"""Prometheus metrics: the stages' stats objects, read at scrape time (no second bookkeeping),
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
        v, ing, com = gw.verifier.stats, gw.ingest.stats, gw.commit.stats
        up, cmd = gw.uplink.stats, gw.commands.stats

        def counter(name, doc, value):
            return CounterMetricFamily(P + name, doc, value=value)

        def gauge(name, doc, value):
            return GaugeMetricFamily(P + name, doc, value=value)

        yield counter("frames_accepted", "Frames that passed verification", v.accepted)
        rej = CounterMetricFamily(P + "frames_rejected", "Frames rejected, by reason",
                                  labels=["reason"])
        for reason, n in sorted(gw.verdict.rejections().items()):
            rej.add_metric([reason], n)
        yield rej
        yield counter("frames_stored", "Data frames committed to the spool", com.stored)
        yield counter("frames_duplicate", "Data frames seen before (re-sent), acked again",
                      com.duplicates)
        sp = gw.spool.stats()
        yield gauge("spool_frames", "Frames in the spool not yet acknowledged by the broker",
                    sp.rows)
        yield gauge("spool_readings", "Readings in the spool not yet acknowledged", sp.readings)
        yield gauge("spool_used_bytes", "Bytes the spool's pages use", sp.used_bytes)
        yield gauge("spool_budget_bytes", "The spool's disk budget", sp.budget_bytes)
        for what in ("frames", "readings", "intervals"):
            yield counter(f"spool_dropped_{what}",
                          f"{what.capitalize()} dropped over the disk budget (oldest intervals)",
                          getattr(sp, f"dropped_{what}"))
        yield gauge("spool_damaged", "Damaged spool files set aside and kept (delete to clear)",
                    sp.damaged)
        yield counter("spool_salvaged_rows", "Rows salvaged from damaged spool files",
                      sp.salvaged)
        yield counter("spool_lost_rows", "Rows of damaged spool files that could not be read",
                      sp.lost)
        yield counter("spool_quarantined_rows",
                      "Rows kept in quarantine: their pack no longer decodes", sp.quarantined)
        yield counter("spool_full", "Commits refused because the disk was full (not acked)",
                      com.spool_full)
        yield counter("commit_errors", "Commits that failed unexpectedly (not acked; logged)",
                      com.errors)
        yield counter("floors_refused", "Hellos answered without a floor: the id's numbers "
                      "are spent (re-provision the node)", v.floors_refused)
        yield counter("control_save_failures", "Transactions of control seqs the spool "
                      "refused (kept in memory; logged)", gw.control.failures)
        yield gauge("tcp_links_open", "TCP links open now", ing.tcp_open)
        yield gauge("tcp_links_max", "TCP links allowed at once (from the open-file limit)",
                    ing.tcp_max)
        for name, doc, value in (
                ("tcp_refused", "TCP connections refused at capacity", ing.tcp_refused),
                ("tcp_evicted", "TCP links without a valid frame closed for a new one",
                 ing.tcp_evicted),
                ("tcp_timeouts", "TCP links closed: no valid frame in time, or idle",
                 ing.tcp_timeouts),
                ("tcp_accept_errors", "Failed TCP accepts (EMFILE and the like)",
                 ing.accept_errors),
                ("http_refused", "HTTP connections hung up over the listener's cap",
                 gw.http.refused),
                ("http_malformed", "HTTP requests the parser refused (answered 400)",
                 gw.http.malformed)):
            yield counter(name, doc, value)
        yield counter("batches_published", "Batches acknowledged by the broker (PUBACK)",
                      up.published_batches)
        yield counter("readings_published", "Readings in acknowledged batches",
                      up.published_readings)
        yield counter("backlog_rounds", "Publish rounds that drained a backlog",
                      up.backlog_batches)
        refused = CounterMetricFamily(P + "batches_refused",
                                      "Batches the broker refused (PUBACK reason code >= 0x80), "
                                      "kept in the spool", labels=["code", "reason"])
        for (code, reason), n in sorted(up.refused.items()):
            refused.add_metric([code, reason], n)
        yield refused
        yield counter("batches_replayed", "Acknowledged batches re-sent after a lost connection "
                      "(the broker may have forgotten them; duplicates the backend upserts)",
                      up.replayed_batches)
        yield counter("replies_refused", "Command replies the broker refused (not retried)",
                      up.replies_refused)
        yield gauge("uplink_connected", "1 while connected to a broker", int(up.connected))
        yield counter("uplink_connects", "Successful broker connections", up.connects)
        yield counter("uplink_failures", "Broker connections that failed or dropped",
                      up.failures)
        yield gauge("uplink_seconds_since_progress",
                    "Seconds since the uplink last published or found nothing to send",
                    time.monotonic() - up.last_progress)
        yield counter("commands_sent", "CMD frames sent to nodes (resends included)", cmd.sent)
        yield counter("commands_acked", "Commands a node acknowledged", cmd.acked)
        yield counter("commands_rejected", "Command requests refused (bad JSON, op, node)",
                      cmd.rejected)
        yield counter("commands_retained", "Retained command messages refused (never run)",
                      cmd.retained)
        yield counter("commands_expired", "Commands given up after their time to live",
                      cmd.expired)
        yield gauge("commands_pending", "Commands waiting for a node's ack", cmd.pending)
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
            "write_overflows": (CounterMetricFamily, "link_write_overflows",
                                "Sessions closed because the peer did not read its acks"),
        }
        for attr, (kind, name, doc) in families.items():
            fam = kind(P + name, doc, labels=["link"])
            for link, stats in sorted(ing.links.items()):
                fam.add_metric([link], getattr(stats, attr))
            yield fam
        ok, _ = gw.verdict.health()
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
            self.latency.observe(max(0.0, now - row.received))
