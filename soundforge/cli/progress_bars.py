"""`soundforge add --wait` (and the demo): one progress bar per track and stage, driven by
NOTIFY events and the pipeline view, until every pipeline has ended.

Every row is one terminal line whatever the console width: the track title and stage name keep
fixed widths, and only the status column gives way, shortening a long error with an ellipsis
(its first line only); the full error is printed in the summary below the bars."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import psycopg
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn
from rich.table import Column

from soundforge import live
from soundforge.cli.output import safe

POLL_S = 1.0
TITLE_WIDTH = (8, 24)  # narrowest, widest
STAGE_WIDTH = 9
PERCENT_WIDTH = 4
BAR_WIDTH = (10, 20)  # on consoles narrower than WIDE_CONSOLE, wider ones
WIDE_CONSOLE = 100
STATUS_MIN_WIDTH = 24


def follow(
    listener: psycopg.Connection[Any],
    reader: psycopg.Connection[Any],
    track_ids: Sequence[uuid.UUID],
    console: Console,
) -> list[dict[str, Any]]:
    """Show bars until each track's pipeline ends; returns the final pipeline rows."""
    bars: dict[tuple[str, str], TaskID] = {}
    with Progress(*_columns(console.width), console=console, transient=False,
                  expand=True) as progress:  # fmt: skip
        for _event in live.events(listener, POLL_S):
            rows = live.pipeline_rows(reader, track_ids, limit=len(track_ids))
            for row in rows:
                _update_bars(progress, bars, row)
            if rows and all(live.pipeline_finished(row) for row in rows):
                return rows
    return []


def _columns(console_width: int) -> tuple[TextColumn | BarColumn, ...]:
    """Title and stage (fixed widths, never wrapped), bar, percentage, and the status, which
    takes the rest of the line and alone is cut (ellipsis) to keep the row on one line; on a
    narrow console the bar and then the title get narrower first. Nothing is read as markup."""

    def fixed(width: int) -> Column:
        return Column(width=width, min_width=width, no_wrap=True, overflow="ellipsis")

    bar = BAR_WIDTH[1] if console_width >= WIDE_CONSOLE else BAR_WIDTH[0]
    spare = console_width - STAGE_WIDTH - bar - PERCENT_WIDTH - STATUS_MIN_WIDTH - 4  # 4 gaps
    title = max(TITLE_WIDTH[0], min(TITLE_WIDTH[1], spare))
    return (
        TextColumn("{task.fields[title]}", markup=False, table_column=fixed(title)),
        TextColumn("{task.fields[stage]}", markup=False, table_column=fixed(STAGE_WIDTH)),
        BarColumn(bar_width=bar),
        TextColumn("{task.percentage:>3.0f}%", table_column=fixed(PERCENT_WIDTH)),
        TextColumn("{task.fields[status]}", markup=False,
                   table_column=Column(no_wrap=True, overflow="ellipsis", ratio=1)),
    )  # fmt: skip


def _status_label(status: str, error: str | None) -> str:
    return f"failed: {safe(error)}" if status == "failed" and error else status


def _update_bars(
    progress: Progress, bars: dict[tuple[str, str], TaskID], row: dict[str, Any]
) -> None:
    title = safe(row["title"] or str(row["track_id"]))
    for stage in live.STAGES:
        status, percent, error = live.stage_state(row, stage)
        if status is None:
            continue
        key = (str(row["track_id"]), stage)
        if key not in bars:
            bars[key] = progress.add_task("", total=100, title=title, stage=stage,
                                          status=status)  # fmt: skip
        progress.update(bars[key], completed=percent, status=_status_label(status, error))
