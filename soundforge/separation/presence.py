"""Whether a separation model's weights are on this machine, answered without importing torch
or demucs (the web dashboard's GET /api/models asks it on every call): the configured local
repo (`SOUNDFORGE_DEMUCS_REPO`: `<name>.yaml` and the `.th` files it names), else torch hub's
checkpoint folder with the files demucs' release list names. `loading.py` is what actually
loads them; this only looks."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import yaml

from soundforge.separation.registry import stem_names


def _demucs_remote() -> Path | None:
    spec = importlib.util.find_spec("demucs")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "remote"


def torch_hub_checkpoints() -> Path:
    """torch.hub.get_dir()/checkpoints, computed as torch does ($TORCH_HOME, else
    $XDG_CACHE_HOME/torch, else ~/.cache/torch)."""
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "torch")
    return Path(torch_home) / "hub" / "checkpoints"


def _signatures(bag_file: Path) -> list[str]:
    try:
        description = yaml.safe_load(bag_file.read_text())
        return [str(sig) for sig in description["models"]]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return []


def _released_files(remote: Path) -> dict[str, str]:
    files: dict[str, str] = {}
    try:
        lines = (remote / "files.txt").read_text().splitlines()
    except OSError:
        return files
    for line in lines:
        name = line.strip()
        if name and not name.startswith("#") and "-" in name:
            files[name.split("-", 1)[0]] = name
    return files


def model_presence(name: str, repo: Path | None) -> dict[str, Any]:
    """{name, stems, present, where} for one model."""
    answer: dict[str, Any] = {"name": name, "stems": list(stem_names(name)), "present": False,
                              "where": None}  # fmt: skip
    if repo is not None:
        signatures = _signatures(repo / f"{name}.yaml")
        answer["present"] = bool(signatures) and all(
            (repo / f"{sig}.th").is_file() for sig in signatures)
        answer["where"] = "SOUNDFORGE_DEMUCS_REPO"
        return answer
    remote = _demucs_remote()
    if remote is None:
        answer["where"] = "demucs is not installed (the stems extra)"
        return answer
    released = _released_files(remote)
    signatures = _signatures(remote / f"{name}.yaml")
    checkpoints = torch_hub_checkpoints()
    answer["present"] = bool(signatures) and all(
        sig in released and (checkpoints / released[sig]).is_file() for sig in signatures)
    answer["where"] = "torch hub cache"
    return answer
