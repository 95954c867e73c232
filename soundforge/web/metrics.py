"""`/metrics` in Prometheus' text format (prometheus-client): read at scrape time from a few
small queries (queue counts, waits, the finished-job tally the row trigger keeps, workers)
plus this process' live-event figures. Nothing secret is ever a label or a value."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from soundforge import operations

if TYPE_CHECKING:
    from soundforge.web.context import WebContext

QUEUE_STATUSES = ("todo", "doing")
"""Finished jobs are counted by `soundforge_stage_duration_seconds_count` (a tally), never by
scanning the queue's history at each scrape."""


class SoundForgeCollector(Collector):
    def __init__(self, ctx: WebContext) -> None:
        self.ctx = ctx

    def collect(self) -> Iterator[Metric]:
        with self.ctx.connection() as conn:
            stats = operations.queue_stats(conn, live_only=True)
            outcomes = operations.stage_outcomes(conn)
            bounds = operations.duration_buckets(conn)
            workers = operations.workers(conn)
        yield from _queue_metrics(stats)
        yield from _stage_metrics(outcomes, bounds)
        fresh = operations.fresh_heartbeat_s(self.ctx.settings.heartbeat_interval_s)
        alive = GaugeMetricFamily("soundforge_workers_alive",
                                  "Workers whose heartbeat is fresh", labels=["queue"])  # fmt: skip
        per_queue: dict[str, int] = {}
        for worker in workers:
            if worker["heartbeat_age_s"] <= fresh:
                for queue in worker["queues"] or ["*"]:
                    per_queue[queue] = per_queue.get(queue, 0) + 1
        for queue, count in sorted(per_queue.items()):
            alive.add_metric([queue], count)
        yield alive
        yield GaugeMetricFamily("soundforge_workers_registered",
                                "Workers registered in procrastinate_workers", value=len(workers))
        stats_now = self.ctx.broadcaster.stats
        yield GaugeMetricFamily("soundforge_web_live_clients",
                                "Browsers following live progress (SSE) on this server",
                                value=self.ctx.broadcaster.subscriber_count)  # fmt: skip
        yield CounterMetricFamily("soundforge_web_progress_events",
                                  "Progress events this server received (LISTEN)",
                                  value=stats_now.events)  # fmt: skip


def _queue_metrics(stats: list[operations.QueueStats]) -> Iterator[Metric]:
    jobs = GaugeMetricFamily("soundforge_queue_jobs",
                             "Procrastinate jobs waiting (todo) or running (doing) per queue",
                             labels=["queue", "status"])  # fmt: skip
    oldest = GaugeMetricFamily("soundforge_queue_oldest_waiting_seconds",
                               "Age of the oldest waiting job per queue (0: none waiting)",
                               labels=["queue"])  # fmt: skip
    for queue in stats:
        for status in QUEUE_STATUSES:
            jobs.add_metric([queue.queue, status], queue.counts.get(status, 0))
        oldest.add_metric([queue.queue], queue.oldest_waiting_s or 0.0)
    yield jobs
    yield oldest


def _stage_metrics(outcomes: list[dict[str, Any]], bounds: list[float]) -> Iterator[Metric]:
    durations = HistogramMetricFamily(
        "soundforge_stage_duration_seconds",
        "Time from a job row's start (else creation) to its end, by stage and outcome",
        labels=["stage", "outcome"],
    )
    failures = CounterMetricFamily("soundforge_stage_failures", "Job rows that ended failed",
                                   labels=["stage"])  # fmt: skip
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in outcomes:
        grouped.setdefault((row["stage"], row["status"]), []).append(row)
    failed: dict[str, int] = {}
    for (stage, status), rows in sorted(grouped.items()):
        counts = {float(row["le"]): int(row["jobs"]) for row in rows}
        running = 0
        buckets = []
        for bound in bounds:
            running += counts.get(bound, 0)
            buckets.append(("+Inf" if math.isinf(bound) else f"{bound:g}", running))
        durations.add_metric([stage, status], buckets,
                             sum(float(row["seconds"]) for row in rows))  # fmt: skip
        if status == "failed":
            failed[stage] = running
    for stage in ("download", "separate", "analyze"):
        failures.add_metric([stage], failed.get(stage, 0))
    yield durations
    yield failures


def render_metrics(ctx: WebContext) -> tuple[bytes, str]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SoundForgeCollector(ctx))
    return generate_latest(registry), CONTENT_TYPE_LATEST
