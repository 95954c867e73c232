"""The spotdl resolver, an alternative to yt-dlp when installed and chosen (`resolver =
"spotdl"`): runs `spotdl download <track URL>` into a private staging folder, its traffic
through the destination policy's proxy (the proxy variables of its environment), and hands back
the one audio file it wrote. spotdl always re-encodes, so it needs ffmpeg; both are checked
first."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path

from soundforge import audio_io
from soundforge.errors import FfmpegMissingError
from soundforge.redact import mask_text
from soundforge.sources.config import SourceConfig
from soundforge.sources.errors import NoMatchError, ResolverError, ResolverUnavailableError
from soundforge.sources.model import TrackMetadata
from soundforge.sources.policy_proxy import PolicyProxy

logger = logging.getLogger(__name__)

OUTPUT_TEMPLATE = "{track-id}.{output-ext}"


def spotdl_path() -> str | None:
    return shutil.which("spotdl")


def proxied_environment(proxy_url: str) -> dict[str, str]:
    """This process's environment with every proxy variable pointing at the policy proxy and
    no exceptions to it (spotdl, its yt-dlp and its Spotify client read these)."""
    environment = {
        name: value for name, value in os.environ.items()
        if name.lower() not in ("no_proxy", "http_proxy", "https_proxy", "all_proxy")
    }  # fmt: skip
    for name in ("http_proxy", "https_proxy", "all_proxy"):
        environment[name] = environment[name.upper()] = proxy_url
    return environment


def download(metadata: TrackMetadata, staging_dir: Path, config: SourceConfig) -> Path:
    """Download the Spotify track with spotdl into `staging_dir` (which must be empty) and
    return the file it produced."""
    executable = spotdl_path()
    if executable is None:
        raise ResolverUnavailableError(
            "the spotdl resolver is chosen (SOUNDFORGE_RESOLVER=spotdl) but spotdl is not "
            "installed or not on PATH; install it (pip install spotdl) or use yt-dlp"
        )
    ffmpeg = audio_io.ffmpeg_path()
    if ffmpeg is None:
        raise FfmpegMissingError("the spotdl resolver")
    if not metadata.spotify_url:
        raise ResolverError(f"{metadata.title!r}: spotdl needs a Spotify track URL")
    command = [
        executable, "download", metadata.spotify_url,
        "--output", str(staging_dir / OUTPUT_TEMPLATE),
        "--ffmpeg", ffmpeg,
        "--log-level", "ERROR",
    ]  # fmt: skip
    logger.info("spotdl: downloading %s", metadata.spotify_url)
    with PolicyProxy(config.destinations, connect_timeout_s=config.connect_timeout_s,
                     idle_timeout_s=config.read_timeout_s) as proxy:  # fmt: skip
        try:
            completed = subprocess.run(
                command, capture_output=True, text=True, timeout=config.spotdl_timeout_s,
                check=False, env=proxied_environment(proxy.url),
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            raise ResolverError(
                f"spotdl did not finish {metadata.spotify_url} within "
                f"{config.spotdl_timeout_s:g} s"
            ) from None
        if completed.returncode != 0:
            proxy.raise_if_refused()
    produced = sorted(p for p in staging_dir.iterdir() if p.is_file() and p.stat().st_size)
    if completed.returncode != 0:
        detail = (completed.stderr or completed.stdout).strip().splitlines()
        raise ResolverError(
            f"spotdl failed for {metadata.spotify_url} (exit {completed.returncode}): "
            f"{mask_text(detail[-1]) if detail else 'no output'}"
        )
    if not produced:
        raise NoMatchError(f"spotdl found no audio for {metadata.spotify_url}")
    return produced[0]
