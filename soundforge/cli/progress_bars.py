"""`soundforge add --wait`: one progress bar per track and stage, driven by NOTIFY events and
the pipeline view, until every pipeline has ended."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import psycopg
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn

from soundforge import live
from soundforge.cli.output import safe

POLL_S = 1.0


def follow(
    listener: psycopg.Connection[Any],
    reader: psycopg.Connection[Any],
    track_ids: Sequence[uuid.UUID],
    console: Console,
) -> list[dict[str, Any]]:
    """Show bars until each track's pipeline ends; returns the final pipeline rows."""
    bars: dict[tuple[str, str], TaskID] = {}
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TextColumn("{task.fields[status]}"),
        console=console,
        transient=False,
    ) as progress:
        for _event in live.events(listener, POLL_S):
            rows = live.pipeline_rows(reader, track_ids, limit=len(track_ids))
            for row in rows:
                _update_bars(progress, bars, row)
            if rows and all(live.pipeline_finished(row) for row in rows):
                return rows
    return []


def _update_bars(
    progress: Progress, bars: dict[tuple[str, str], TaskID], row: dict[str, Any]
) -> None:
    title = safe((row["title"] or str(row["track_id"]))[:32])
    for stage in live.STAGES:
        status, percent, error = live.stage_state(row, stage)
        if status is None:
            continue
        key = (str(row["track_id"]), stage)
        if key not in bars:
            bars[key] = progress.add_task(f"{title:32} {stage:9}", total=100, status=status)
        label = f"failed: {safe(error)}" if status == "failed" and error else status
        progress.update(bars[key], completed=percent, status=label)
