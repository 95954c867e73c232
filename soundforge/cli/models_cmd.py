"""`soundforge models list|fetch`: which separation models' released weights are in the folder
the loader reads, and fetching missing ones from the weight host with a progress bar."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TransferSpeedColumn,
)

from soundforge.cli.common import add_json_flag, print_json
from soundforge.engines import fetch_weights
from soundforge.separation.registry import DEFAULT_MODEL, MODEL_NAMES, check_model_name
from soundforge.settings import Settings, load_settings


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("models", help="list or fetch separation model weights")
    commands = parser.add_subparsers(dest="models_command", metavar="ACTION", required=True)

    listing = commands.add_parser("list", help="each model and whether its weights are here")
    add_json_flag(listing)
    listing.set_defaults(handler=run_list)

    fetch = commands.add_parser(
        "fetch", help="download released weights (each file once, checksum verified)"
    )
    fetch.add_argument("names", nargs="*", metavar="NAME",
                       help=f"models to fetch (default: SOUNDFORGE_DEMUCS_MODEL, else "
                       f"{DEFAULT_MODEL}); choose from {', '.join(MODEL_NAMES)}")  # fmt: skip
    fetch.set_defaults(handler=run_fetch)


def run_list(args: argparse.Namespace) -> int:
    from soundforge.separation import weights

    config = load_settings()
    folder = weights.weights_dir(config.demucs_repo)
    rows: list[dict[str, Any]] = []
    for name in MODEL_NAMES:
        files = weights.model_files(name)
        missing = weights.missing_files(name, config.demucs_repo)
        rows.append({"model": name, "present": weights.model_present(name, config.demucs_repo),
                     "files": [f.name for f in files],
                     "missing": [f.name for f in missing]})  # fmt: skip
    if args.json:
        print_json({"folder": str(folder), "models": rows})
        return 0
    print(f"weights folder: {folder}")
    for row in rows:
        count = f"{len(row['missing'])} of {len(row['files'])} file(s)"
        print(f"  {row['model']:12} {'present' if row['present'] else 'missing ' + count}")
    return 0


def run_fetch(args: argparse.Namespace) -> int:
    config = load_settings()
    names = [check_model_name(name) for name in args.names or [config.demucs_model]]
    for name in names:
        fetch_with_progress(config, name, Console(stderr=True))
    return 0


def fetch_with_progress(config: Settings, name: str, console: Console) -> None:
    """Fetch what model `name` is missing, one bar per file; says where it went."""
    from soundforge.separation import weights

    bars: dict[str, TaskID] = {}
    columns = (TextColumn("{task.description}", markup=False), BarColumn(), DownloadColumn(),
               TransferSpeedColumn())  # fmt: skip
    with Progress(*columns, console=console) as progress:

        def on_bytes(file: weights.WeightFile, done: int, total: int | None) -> None:
            if file.name not in bars:
                bars[file.name] = progress.add_task(f"{name} {file.name}", total=total)
            progress.update(bars[file.name], completed=done)

        written = fetch_weights(config, name, progress=on_bytes)
    folder = weights.weights_dir(config.demucs_repo)
    if written:
        console.print(f"{name}: fetched {len(written)} file(s) into {folder}", markup=False,
                      highlight=False)  # fmt: skip
    else:
        console.print(f"{name}: already present in {folder}", markup=False, highlight=False)
