"""Find, load and keep demucs models: from a local folder in demucs' `--repo` layout, or, with no
repo, from demucs' own download caches (the Hugging Face hub cache, then torch hub's
`checkpoints/`), never from the network. Loaded models are kept per process, keyed by name,
repo, device and the repo's bag file, so a worker loads a model once for all its jobs.
"""

from __future__ import annotations

import logging
import pickle
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from demucs.apply import BagOfModels, Model
from demucs.pretrained import REMOTE_ROOT, _parse_remote_files, get_model
from demucs.repo import ModelLoadingError
from demucs.states import load_model as load_demucs_package

from soundforge.separation.errors import ModelLoadError, ModelNotFoundError
from soundforge.separation.registry import check_model_name, stem_names

logger = logging.getLogger(__name__)

HF_NAMESPACE = "adefossez"
_LOAD_ERRORS = (
    ModelLoadingError, OSError, RuntimeError, EOFError, pickle.UnpicklingError, yaml.YAMLError,
    KeyError, TypeError, ValueError, AssertionError,
)  # fmt: skip


@dataclass(frozen=True)
class LoadedModel:
    """A bag of one or more demucs models (in eval mode, on `device`) and how to mix them."""

    name: str
    members: tuple[torch.nn.Module, ...]
    weights: tuple[tuple[float, ...], ...]  # per member, per source (the bag's yaml `weights`)
    sources: tuple[str, ...]
    sample_rate: int
    audio_channels: int
    device: torch.device


_cache: dict[tuple[object, ...], LoadedModel] = {}
_cache_lock = threading.Lock()


def load(name: str, repo: Path | None, device: torch.device) -> LoadedModel:
    """The model `name` on `device`, loaded once per process.

    Raises `UnknownModelError`, `ModelNotFoundError` (saying where the weights belong) or
    `ModelLoadError`.
    """
    check_model_name(name)
    key = _cache_key(name, repo, device)
    with _cache_lock:
        cached = _cache.get(key)
        if cached is None:
            bag = _load_from_repo(name, repo) if repo is not None else _load_from_caches(name)
            cached = _prepare(name, bag, device)
            _cache[key] = cached
            logger.info("loaded separation model %s (%d member(s)) on %s",
                        name, len(cached.members), device)
        return cached


def clear_cache() -> None:
    """Forget every loaded model (tests; a worker never needs to)."""
    with _cache_lock:
        _cache.clear()


def _cache_key(name: str, repo: Path | None, device: torch.device) -> tuple[object, ...]:
    if repo is None:
        return (name, None, str(device))
    bag_file = repo / f"{name}.yaml"
    try:
        stat = bag_file.stat()
        version: tuple[int, int] | None = (stat.st_mtime_ns, stat.st_size)
    except OSError:
        version = None
    return (name, str(repo.absolute()), str(device), version)


def released_files(name: str) -> dict[str, str]:
    """Signature -> download URL of the released weights of `name`."""
    urls = _parse_remote_files(REMOTE_ROOT / "files.txt")
    bag = yaml.safe_load((REMOTE_ROOT / f"{name}.yaml").read_text())
    return {signature: urls[signature] for signature in bag["models"]}


def _load_from_repo(name: str, repo: Path) -> BagOfModels:
    if not repo.is_dir():
        raise ModelNotFoundError(
            f"model repository {repo} is not a folder; create it and put {name}.yaml and the "
            f"weights in it ({_url_list(name)}), or unset the repo to use demucs' download cache"
        )
    if not (repo / f"{name}.yaml").is_file():
        raise ModelNotFoundError(
            f"weights for model {name} not found: {repo / (name + '.yaml')} does not exist; "
            f"put {name}.yaml and its weights ({_url_list(name)}) in {repo}"
        )
    try:
        loaded = get_model(name, repo)
    except ModelLoadingError as error:
        if "Could not find" in str(error):
            raise ModelNotFoundError(
                f"weights for model {name} incomplete in {repo}: {error} Put the .th files "
                f"named in {name}.yaml beside it ({_url_list(name)})"
            ) from None
        raise ModelLoadError(f"model {name} in {repo} cannot be loaded: {error}") from None
    except _LOAD_ERRORS as error:
        raise ModelLoadError(
            f"model {name} in {repo} cannot be loaded ({type(error).__name__}: {error}); "
            "replace the damaged .th/.yaml files"
        ) from None
    return _as_bag(loaded)


def _load_from_caches(name: str) -> BagOfModels:
    bag = _load_from_hf_cache(name)
    if bag is None:
        bag = _load_from_torch_hub_cache(name)
    if bag is None:
        checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
        raise ModelNotFoundError(
            f"weights for model {name} are not in demucs' download cache; download "
            f"{_url_list(name)} into {checkpoints} (or run `python -m demucs.separate -n "
            f"{name} FILE` once with internet access), or run `soundforge models fetch "
            f"{name}`, or point SOUNDFORGE_DEMUCS_REPO (--repo) at a folder holding "
            f"{name}.yaml and those .th files"
        )
    return bag


def _load_from_hf_cache(name: str) -> BagOfModels | None:
    """The bag from the Hugging Face hub cache (demucs 4.1's first choice), offline."""
    try:
        from demucs.hf import hf_repo_name, load_safetensors_model
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    repo_id = f"{HF_NAMESPACE}/{hf_repo_name(name)}"
    bag_path = try_to_load_from_cache(repo_id, f"{name}.yaml")
    if not isinstance(bag_path, str):
        return None
    try:
        description = yaml.safe_load(Path(bag_path).read_text())
        paths = [try_to_load_from_cache(repo_id, f"{sig}.safetensors")
                 for sig in description["models"]]
        if not all(isinstance(path, str) for path in paths):
            return None
        models = [load_safetensors_model(str(path)) for path in paths]
        return BagOfModels(models, description.get("weights"), description.get("segment"))
    except _LOAD_ERRORS as error:
        raise ModelLoadError(
            f"model {name} in the Hugging Face cache cannot be loaded ({error}); delete "
            f"{Path(bag_path).parent} and download it again"
        ) from None


def _load_from_torch_hub_cache(name: str) -> BagOfModels | None:
    """The bag from torch hub's checkpoints folder (demucs' legacy download cache), offline."""
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    files = [checkpoints / url.rsplit("/", 1)[-1] for url in released_files(name).values()]
    if not all(path.is_file() for path in files):
        return None
    description = yaml.safe_load((REMOTE_ROOT / f"{name}.yaml").read_text())
    try:
        models = [load_demucs_package(path) for path in files]  # type: ignore[no-untyped-call]
    except _LOAD_ERRORS as error:
        raise ModelLoadError(
            f"model {name} in {checkpoints} cannot be loaded ({error}); delete its files and "
            "download them again"
        ) from None
    return BagOfModels(models, description.get("weights"), description.get("segment"))


def _url_list(name: str) -> str:
    return ", ".join(released_files(name).values())


def _as_bag(loaded: BagOfModels | Model) -> BagOfModels:
    if isinstance(loaded, BagOfModels):
        return loaded
    return BagOfModels([loaded])


def _prepare(name: str, bag: BagOfModels, device: torch.device) -> LoadedModel:
    expected = stem_names(name)
    if tuple(bag.sources) != expected:
        raise ModelLoadError(
            f"model {name} emits stems {', '.join(bag.sources)}, expected {', '.join(expected)}; "
            "the repo holds another model under this name"
        )
    members = tuple(member.to(device).eval() for member in bag.models)
    for member in members:
        member.requires_grad_(False)
    return LoadedModel(
        name=name,
        members=members,
        weights=tuple(tuple(float(value) for value in row) for row in bag.weights),
        sources=expected,
        sample_rate=int(bag.samplerate),
        audio_channels=int(bag.audio_channels),
        device=device,
    )
