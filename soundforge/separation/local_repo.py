"""Build demucs models locally (untrained, seeded) and write them as a local demucs repository,
so tests and benches run the real loading and separation path without downloading weights.

A local repo in demucs' `--repo` layout is `<dir>/<signature>.th` (a pickled dict with `klass`,
`args`, `kwargs` and `state`, what `demucs.states.load_model` reads) per model, plus
`<dir>/<name>.yaml` naming the signatures of the bag (with `weights` / `segment` where the
released bag has them). The architectures mirror the released checkpoints: `full` is the
released size (about 42 M parameters per HTDemucs), `tiny` is the same class with 8 channels
and a 2 s segment, for tests that must run in seconds.
"""

from __future__ import annotations

import hashlib
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from demucs.hdemucs import HDemucs
from demucs.htdemucs import HTDemucs

from soundforge.separation.registry import stem_names

ModelSize = Literal["tiny", "full"]

TINY_SEGMENT_S = Fraction(2)
TINY_BAG_SEGMENT_S = 3  # mdx_extra's yaml `segment` (44 s released): the chunk length it forces
BAG_SIZES = {"htdemucs_ft": 4, "mdx_extra": 4}


def _htdemucs_kwargs(sources: tuple[str, ...], size: ModelSize) -> dict[str, Any]:
    if size == "tiny":
        return {"sources": list(sources), "channels": 8, "segment": TINY_SEGMENT_S}
    # The released htdemucs / htdemucs_6s / htdemucs_ft checkpoints: class defaults except these.
    return {
        "sources": list(sources),
        "segment": Fraction(39, 5),
        "dconv_mode": 3,
        "t_dropout": 0.02,
        "bottom_channels": 512,
        "t_sparse_attn_window": 400,
    }


def _hdemucs_kwargs(sources: tuple[str, ...], size: ModelSize) -> dict[str, Any]:
    if size == "tiny":
        return {"sources": list(sources), "channels": 8}
    return {"sources": list(sources)}


def build_model(name: str, size: ModelSize = "tiny", seed: int = 0) -> torch.nn.Module:
    """One untrained model of the architecture `name` uses, initialised from `seed` (the global
    torch random state is left untouched)."""
    sources = stem_names(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model: torch.nn.Module
        if name == "mdx_extra":
            model = HDemucs(**_hdemucs_kwargs(sources, size))
        else:
            model = HTDemucs(**_htdemucs_kwargs(sources, size))
        return model


def _signature(name: str, size: ModelSize, seed: int, index: int) -> str:
    return hashlib.sha256(f"{name}:{size}:{seed}:{index}".encode()).hexdigest()[:8]


def _bag_description(name: str, size: ModelSize, signatures: list[str]) -> dict[str, Any]:
    description: dict[str, Any] = {"models": signatures}
    if name == "htdemucs_ft":  # one specialist per source, as released
        count = len(signatures)
        description["weights"] = [
            [1.0 if row == column else 0.0 for column in range(count)] for row in range(count)
        ]
    if name == "mdx_extra":
        description["segment"] = TINY_BAG_SEGMENT_S if size == "tiny" else 44
    return description


def write_local_repo(
    directory: Path | str,
    name: str = "htdemucs",
    size: ModelSize = "tiny",
    seed: int = 0,
) -> Path:
    """Build the model(s) of `name` untrained from `seed` and write them into `directory` in
    demucs' local repo layout; returns the directory (pass it as `repo`). Calling it again with
    another seed rewrites `<name>.yaml` to point at the new weights."""
    repo = Path(directory)
    repo.mkdir(parents=True, exist_ok=True)
    signatures = []
    for index in range(BAG_SIZES.get(name, 1)):
        model = build_model(name, size, seed + index)
        args, kwargs = model.__dict__["_init_args_kwargs"]  # recorded by demucs' capture_init
        package = {
            "klass": type(model),
            "args": args,
            "kwargs": kwargs,
            "state": {key: value.clone() for key, value in model.state_dict().items()},
        }
        signature = _signature(name, size, seed, index)
        torch.save(package, repo / f"{signature}.th")
        signatures.append(signature)
    description = _bag_description(name, size, signatures)
    (repo / f"{name}.yaml").write_text(yaml.safe_dump(description, default_flow_style=None))
    return repo
