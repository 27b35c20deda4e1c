"""Prometheus metrics of the KV-events subsystem, read from the live counters at scrape time.

A custom collector keeps the event path free of metric updates and drops a pod's series as
soon as its subscriber goes away. Names:

    epp_kvevents_messages_total{pod}            ZMQ messages received
    epp_kvevents_events_total{pod}              events applied (BlockStored/Removed/Cleared)
    epp_kvevents_dropped_messages_total{pod,reason}  malformed frames / undecodable payloads
    epp_kvevents_sequence_gaps_total{pod}       detected sequence gaps
    epp_kvevents_missed_batches_total{pod}      batches lost in those gaps
    epp_kvevents_resyncs_total{pod}             times the pod's view was cleared to recover
    epp_kvevents_replayed_batches_total{pod}    batches recovered from the replay socket
    epp_kvevents_pod_stale{pod}                 1 while the pod's view is being recovered
    epp_kvevents_pod_connected{pod}             1 while the SUB socket is connected
    epp_kvevents_index_blocks                   distinct block hashes in the index
    epp_kvevents_index_{admissions,evictions,lookups,lookup_hits}_total
    epp_kvevents_hash_mismatch_ratio{pod}       recent share of block hashes we could not
                                                reproduce (wrong algo/seed/block size)
    epp_kvevents_hash_checks_total{result}      stored-hash and hit checks by outcome
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from epp.prefixcache.manager import KVEventsManager


class KVEventsCollector(Collector):
    def __init__(self, manager: KVEventsManager) -> None:
        self.manager = manager

    def describe(self) -> list[Metric]:
        # Empty on purpose: the registry then skips the duplicate-name check, so tests and
        # a restarted manager can register a fresh collector.
        return []

    def collect(self) -> Iterator[Metric]:
        m = self.manager
        messages = CounterMetricFamily("epp_kvevents_messages", "KV-event ZMQ messages received",
                                       labels=["pod"])
        events = CounterMetricFamily("epp_kvevents_events", "KV events applied to the index",
                                     labels=["pod"])
        dropped = CounterMetricFamily("epp_kvevents_dropped_messages",
                                      "KV-event messages dropped as garbage", labels=["pod", "reason"])
        gaps = CounterMetricFamily("epp_kvevents_sequence_gaps", "KV-event sequence gaps detected",
                                   labels=["pod"])
        missed = CounterMetricFamily("epp_kvevents_missed_batches", "KV-event batches lost in gaps",
                                     labels=["pod"])
        resyncs = CounterMetricFamily("epp_kvevents_resyncs",
                                      "Times a pod's view was cleared to recover", labels=["pod"])
        replayed = CounterMetricFamily("epp_kvevents_replayed_batches",
                                       "KV-event batches recovered from the replay socket",
                                       labels=["pod"])
        stale = GaugeMetricFamily("epp_kvevents_pod_stale", "1 while a pod's view is being recovered",
                                  labels=["pod"])
        connected = GaugeMetricFamily("epp_kvevents_pod_connected",
                                      "1 while the pod's KV-event socket is connected", labels=["pod"])
        for pod, s in m.all_stats():
            messages.add_metric([pod], s.messages)
            events.add_metric([pod], s.events)
            dropped.add_metric([pod, "malformed_frames"], s.malformed_frames)
            dropped.add_metric([pod, "decode_error"], s.decode_errors)
            gaps.add_metric([pod], s.gaps)
            missed.add_metric([pod], s.missed_batches)
            resyncs.add_metric([pod], s.resyncs)
            replayed.add_metric([pod], s.replayed_batches)
            stale.add_metric([pod], 1.0 if s.stale else 0.0)
            connected.add_metric([pod], 1.0 if s.connected else 0.0)
        yield from (messages, events, dropped, gaps, missed, resyncs, replayed, stale, connected)

        st = m.index.stats
        yield GaugeMetricFamily("epp_kvevents_index_blocks", "Distinct block hashes in the KV-block index",
                                value=st.blocks)
        for name, value, doc in (
            ("admissions", st.admissions, "Block hashes added to the index"),
            ("evictions", st.evictions, "Block hashes evicted by the index's LRU bound"),
            ("lookups", st.lookups, "Prefix lookups"),
            ("lookup_hits", st.lookup_hits, "Prefix lookups where some pod matched"),
        ):
            yield CounterMetricFamily(f"epp_kvevents_index_{name}", doc, value=value)

        checker = m.checker
        if checker is not None:
            ratio = GaugeMetricFamily("epp_kvevents_hash_mismatch_ratio",
                                      "Recent share of KV-event block hashes the EPP could not "
                                      "reproduce (check hashAlgo/hashSeed/blockSize)", labels=["pod"])
            for pod in checker.pods():
                ratio.add_metric([pod], checker.mismatch_ratio(pod))
            yield ratio
            t = checker.totals
            checks = CounterMetricFamily("epp_kvevents_hash_checks", "Block-hash checks by outcome",
                                         labels=["result"])
            checks.add_metric(["stored_match"], t.stored_checked - t.stored_mismatched)
            checks.add_metric(["stored_mismatch"], t.stored_mismatched)
            checks.add_metric(["stored_skipped"], t.stored_skipped)
            checks.add_metric(["hit_match"], t.hit_checked - t.hit_mismatched)
            checks.add_metric(["hit_mismatch"], t.hit_mismatched)
            yield checks
