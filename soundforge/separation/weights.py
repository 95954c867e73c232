"""Released demucs weights: which files a model needs, whether they are in the folder the loader
reads, and fetching the missing ones from the weight host, once.

The list of files is demucs' own (`remote/files.txt` and `remote/<model>.yaml` in the installed
package, read as text: no torch import); the host is demucs' (`ROOT_URL`) unless the
`SOUNDFORGE_MODELS_URL` setting names a mirror. Each file's name carries the first hex digits
of its SHA-256 (`955717e8-8726e21a.th`): a download is hashed as it is written to a temporary
name beside its destination and renamed into place only when whole and matching, so a failed,
partial or corrupted fetch leaves nothing a loader could pick up.

The destination is the loader's: `SOUNDFORGE_DEMUCS_REPO` when set (then `<model>.yaml` is
written there too, after its weights), else torch hub's `checkpoints/` folder, demucs' own
download cache. Every connection passes the destination policy (`DestinationPolicy`, from
`SOUNDFORGE_ALLOWED_NETWORKS`), like every other fetcher's: a mirror on a private network must
be allowed there.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import BinaryIO

from soundforge.errors import TransientError
from soundforge.separation.errors import ModelLoadError, SeparationError
from soundforge.separation.registry import check_model_name
from soundforge.source_policy import DestinationPolicy

log = logging.getLogger(__name__)

DEFAULT_WEIGHTS_URL = "https://dl.fbaipublicfiles.com/demucs/"
TEMP_PREFIX = ".sf-tmp-"
CHUNK_BYTES = 1 << 20

FileProgress = Callable[["WeightFile", int, int | None], None]
"""Called with (file, bytes written so far, total bytes or None when the host does not say)."""


class WeightsFetchError(TransientError):
    """The weight host could not be reached or the transfer broke off: worth another try."""


class WeightsChecksumError(ModelLoadError):
    """A fetched file's SHA-256 does not match its name: refused, nothing written."""


@dataclass(frozen=True)
class WeightFile:
    """One released weight file: `relative_url` is its path under the host's root."""

    signature: str
    relative_url: str

    @property
    def name(self) -> str:
        return self.relative_url.rsplit("/", 1)[-1]

    @property
    def sha256_prefix(self) -> str:
        return self.name.rsplit(".", 1)[0].rsplit("-", 1)[-1]


def demucs_catalog() -> Path:
    """demucs' own list of released files (`files.txt`, `<model>.yaml`), from its package."""
    return Path(str(resources.files("demucs"))) / "remote"


def _released(catalog: Path) -> dict[str, str]:
    """Signature -> path under the host root, as demucs' `_parse_remote_files` reads it."""
    root = ""
    files: dict[str, str] = {}
    for raw in (catalog / "files.txt").read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("root:"):
            root = line.split(":", 1)[1].strip()
        else:
            files[line.split("-", 1)[0]] = root + line
    return files


def bag_text(name: str, catalog: Path | None = None) -> str:
    """The model's bag description (`<name>.yaml`) as demucs ships it."""
    return ((catalog or demucs_catalog()) / f"{check_model_name(name)}.yaml").read_text("utf-8")


def model_files(name: str, catalog: Path | None = None) -> list[WeightFile]:
    """The weight files of model `name` (one per member of its bag)."""
    import yaml

    catalog = catalog or demucs_catalog()
    released = _released(catalog)
    signatures = yaml.safe_load(bag_text(name, catalog))["models"]
    return [WeightFile(str(signature), released[str(signature)]) for signature in signatures]


def weights_dir(repo: Path | None) -> Path:
    """Where the loader reads released weights: the configured repo, else torch hub's
    `checkpoints/` (TORCH_HOME, else XDG_CACHE_HOME/torch, else ~/.cache/torch)."""
    if repo is not None:
        return repo
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def missing_files(name: str, repo: Path | None, catalog: Path | None = None) -> list[WeightFile]:
    """The files of `name` not yet in the loader's folder (and, for a repo, its yaml)."""
    folder = weights_dir(repo)
    missing = [file for file in model_files(name, catalog) if not (folder / file.name).is_file()]
    return missing


def model_present(name: str, repo: Path | None, catalog: Path | None = None) -> bool:
    if missing_files(name, repo, catalog):
        return False
    return repo is None or (repo / f"{name}.yaml").is_file()


def fetch_model(
    name: str,
    *,
    repo: Path | None,
    base_url: str = DEFAULT_WEIGHTS_URL,
    policy: DestinationPolicy | None = None,
    catalog: Path | None = None,
    progress: FileProgress | None = None,
    timeout_s: float = 30.0,
) -> list[Path]:
    """Download every missing file of model `name` into the loader's folder; returns the paths
    written (empty: all were there). Raises `WeightsFetchError` (network; retry),
    `WeightsChecksumError` (a corrupted file; refused) or `DestinationRefusedError` (the policy
    refuses the host; default policy: public addresses only); nothing is ever half-written."""
    policy = policy or DestinationPolicy()
    folder = weights_dir(repo)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SeparationError(f"cannot create the weights folder {folder} "
                              f"({error.strerror})") from None  # fmt: skip
    written = []
    for weight in missing_files(name, repo, catalog):
        url = base_url.rstrip("/") + "/" + weight.relative_url
        log.info("fetching %s weights %s from %s", name, weight.name, url)
        written.append(_fetch_file(url, folder / weight.name, weight, progress,
                                   _Connection(policy, timeout_s)))  # fmt: skip
    if repo is not None and not (repo / f"{name}.yaml").is_file():
        with _atomic(repo / f"{name}.yaml") as handle:
            handle.write(bag_text(name, catalog).encode())
        written.append(repo / f"{name}.yaml")
    return written


@dataclass(frozen=True)
class _Connection:
    policy: DestinationPolicy
    timeout_s: float


def _fetch_file(
    url: str, destination: Path, weight: WeightFile, progress: FileProgress | None,
    connection: _Connection,
) -> Path:  # fmt: skip
    digest = hashlib.sha256()
    with _atomic(destination) as handle:
        for done, total, chunk in _stream(url, connection):
            handle.write(chunk)
            digest.update(chunk)
            if progress is not None:
                progress(weight, done, total)
        actual = digest.hexdigest()
        if not actual.startswith(weight.sha256_prefix):
            raise WeightsChecksumError(
                f"{url}: SHA-256 {actual[:16]}… does not match the {weight.sha256_prefix} its "
                "name promises; refused (nothing written); check SOUNDFORGE_MODELS_URL"
            )
    return destination


def _stream(url: str, connection: _Connection) -> Iterator[tuple[int, int | None, bytes]]:
    """(bytes so far, total or None, chunk) of one GET through the destination policy (each
    redirect hop checked again); a broken transfer (including a body shorter than its
    Content-Length) raises `WeightsFetchError`."""
    import httpx

    from soundforge.sources.pinned_http import policy_client

    connection.policy.check_url(url)
    done = 0
    try:
        with policy_client(connection.policy, timeout=connection.timeout_s,
                           follow_redirects=True) as client, \
                client.stream("GET", url) as response:  # fmt: skip
            if response.status_code != 200:
                raise WeightsFetchError(f"{url}: the weight host answered HTTP "
                                        f"{response.status_code}")  # fmt: skip
            length = response.headers.get("content-length")
            total = int(length) if length and length.isdigit() else None
            for chunk in response.iter_raw(CHUNK_BYTES):
                done += len(chunk)
                yield done, total, chunk
    except httpx.HTTPError as error:
        raise WeightsFetchError(f"{url}: {type(error).__name__}: {error or 'no detail'}; "
                                "check the network or SOUNDFORGE_MODELS_URL") from None  # fmt: skip
    if total is not None and done != total:
        raise WeightsFetchError(f"{url}: the transfer ended after {done} of {total} bytes")


@contextmanager
def _atomic(destination: Path) -> Iterator[BinaryIO]:
    """A temporary file beside `destination`, fsynced and renamed over it on a clean exit,
    removed on any error."""
    temp = destination.with_name(f"{TEMP_PREFIX}{uuid.uuid4().hex}-{destination.name}")
    try:
        with open(temp, "xb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, destination)
    finally:
        temp.unlink(missing_ok=True)
