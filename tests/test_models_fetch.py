"""Fetching released separation weights from a weight host, here a loopback HTTP server standing
in for demucs' (its base URL is the SOUNDFORGE_MODELS_URL setting): each file once, verified
against the SHA-256 prefix in its name, written atomically where the loader reads it; a
corrupted or cut-off file is refused and leaves nothing behind; workers fetch on first use
unless SOUNDFORGE_FETCH_MODELS=false."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("demucs")

import torch

from soundforge.errors import DestinationRefusedError
from soundforge.separation import loading, weights
from soundforge.separation.local_repo import write_local_repo
from tests.cli_runner import run_cli
from tests.support.audio import tone_bytes
from tests.support.loopback_http import (
    LOOPBACK_NETWORKS,
    LOOPBACK_POLICY,
    LoopbackServer,
    loopback_server,
)
from tests.support.pipeline import ServiceProcesses, service_env

HTDEMUCS = weights.model_files("htdemucs")[0]  # demucs' real released file for htdemucs


@pytest.fixture
def host() -> Any:
    with loopback_server() as server:
        yield server


def _released_tiny_model(tmp_path: Path, host: LoopbackServer) -> tuple[Path, str]:
    """A tiny htdemucs published the way demucs publishes its weights: served at
    `<root>/<signature>-<sha256 prefix>.th`, listed in a catalog (files.txt + htdemucs.yaml)."""
    built = write_local_repo(tmp_path / "built", "htdemucs", size="tiny")
    [weight] = built.glob("*.th")
    body = weight.read_bytes()
    name = f"{weight.stem}-{hashlib.sha256(body).hexdigest()[:8]}.th"
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    (catalog / "files.txt").write_text(f"# tiny test models\nroot: tiny/\n{name}\n")
    shutil.copyfile(built / "htdemucs.yaml", catalog / "htdemucs.yaml")
    host.serve_bytes(f"/tiny/{name}", body)
    return catalog, name


def test_fetch_writes_verified_weights_once_where_the_loader_reads_them(
    tmp_path: Path, host: LoopbackServer
) -> None:
    catalog, name = _released_tiny_model(tmp_path, host)
    repo = tmp_path / "repo"
    seen: list[tuple[str, int, int | None]] = []

    written = weights.fetch_model(
        "htdemucs", repo=repo, base_url=host.base_url, catalog=catalog, policy=LOOPBACK_POLICY,
        progress=lambda file, done, total: seen.append((file.name, done, total)),
    )  # fmt: skip

    assert written == [repo / name, repo / "htdemucs.yaml"]
    assert seen[-1][0] == name and seen[-1][1] == seen[-1][2] == (repo / name).stat().st_size
    assert sorted(path.name for path in repo.iterdir()) == sorted([name, "htdemucs.yaml"])
    loaded = loading.load("htdemucs", repo, torch.device("cpu"))  # demucs checks the checksum
    assert loaded.sources == ("drums", "bass", "other", "vocals")
    loading.clear_cache()
    assert weights.fetch_model("htdemucs", repo=repo, base_url=host.base_url,
                               catalog=catalog, policy=LOOPBACK_POLICY) == []  # fmt: skip
    assert len(host.requests_for(f"/tiny/{name}")) == 1  # once


def test_a_cut_off_transfer_leaves_nothing_behind(tmp_path: Path, host: LoopbackServer) -> None:
    catalog, name = _released_tiny_model(tmp_path, host)
    served = next((tmp_path / "built").glob("*.th")).read_bytes()
    host.serve_bytes(f"/tiny/{name}", served, drop_after=1000)  # drops mid-body
    repo = tmp_path / "repo"
    with pytest.raises(weights.WeightsFetchError, match=r"ended after|RemoteProtocolError"):
        weights.fetch_model("htdemucs", repo=repo, base_url=host.base_url, catalog=catalog,
                            policy=LOOPBACK_POLICY)  # fmt: skip
    assert list(repo.iterdir()) == []  # no partial file, no temporary, no yaml


def _models_env(cli_env: dict[str, str], tmp_path: Path, host: LoopbackServer) -> dict[str, str]:
    return {**cli_env, "TORCH_HOME": str(tmp_path / "torch"), "SOUNDFORGE_FETCH_MODELS": "true",
            "SOUNDFORGE_MODELS_URL": host.base_url}  # fmt: skip


def test_models_fetch_refuses_a_corrupted_file_and_writes_nothing(
    cli_env: dict[str, str], tmp_path: Path, host: LoopbackServer
) -> None:
    host.serve_bytes(f"/{HTDEMUCS.relative_url}", b"not the weights " * 5000)
    env = _models_env(cli_env, tmp_path, host)

    result = run_cli("models", "fetch", "htdemucs", env=env)

    assert result.returncode == 1, result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith(f"soundforge: error: {host.base_url}/{HTDEMUCS.relative_url}: "
                            "SHA-256 "), error  # fmt: skip
    assert f"does not match the {HTDEMUCS.sha256_prefix} its name promises; refused" in error
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    assert list(checkpoints.iterdir()) == []  # not even a temporary file
    listing = json.loads(run_cli("models", "list", "--json", env=env).stdout)
    assert listing["folder"] == str(checkpoints)
    htdemucs = next(row for row in listing["models"] if row["model"] == "htdemucs")
    assert htdemucs == {"model": "htdemucs", "present": False, "files": [HTDEMUCS.name],
                        "missing": [HTDEMUCS.name]}  # fmt: skip


def test_models_list_shows_weights_that_are_present(
    cli_env: dict[str, str], tmp_path: Path, host: LoopbackServer
) -> None:
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / HTDEMUCS.name).write_bytes(b"placed by hand")
    result = run_cli("models", "list", env=_models_env(cli_env, tmp_path, host))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == f"weights folder: {checkpoints}"
    assert "  htdemucs     present" in result.stdout.splitlines()
    assert "  htdemucs_ft  missing 4 of 4 file(s)" in result.stdout.splitlines()


@pytest.mark.parametrize("fetch", [True, False], ids=["fetching", "air-gapped"])
def test_a_worker_fetches_missing_weights_on_first_use_unless_told_not_to(
    cli_env: dict[str, str], tmp_path: Path, host: LoopbackServer, services: ServiceProcesses,
    fetch: bool,
) -> None:  # fmt: skip
    host.serve_bytes(f"/{HTDEMUCS.relative_url}", b"not the weights " * 5000)
    env = service_env(_models_env(cli_env, tmp_path, host),
                      fetch_models=str(fetch).lower())  # fmt: skip
    song = tmp_path / "song.wav"
    song.write_bytes(tone_bytes(1.0))
    services.start("worker", "--queues", "download,processing", env=env, label="worker")

    result = run_cli("add", "--wait", "--no-analysis", str(song), env=env, timeout=240)

    assert result.returncode == 1, result.stdout + result.stderr
    requests = host.requests_for(f"/{HTDEMUCS.relative_url}")
    if fetch:
        assert requests, "the worker did not try the weight host"
        assert "separate failed: " in result.stdout and "refused" in result.stdout, result.stdout
    else:
        assert requests == []
        assert "are not in demucs' download cache" in result.stdout, result.stdout
        assert "soundforge models fetch htdemucs" in result.stdout


def test_the_demo_fetches_missing_weights_and_says_why_stems_are_skipped_when_refused(
    tmp_path: Path, host: LoopbackServer
) -> None:
    from soundforge.demo import stems_unavailable_reason
    from soundforge.engines import fetch_weights
    from soundforge.settings import load_settings

    host.serve_bytes(f"/{HTDEMUCS.relative_url}", b"not the weights " * 5000)
    config = load_settings(demucs_repo=tmp_path / "repo", fetch_models=True,
                           models_url=host.base_url,
                           allowed_networks=LOOPBACK_NETWORKS)  # fmt: skip
    fetched: list[str] = []

    def fetch(name: str) -> None:  # what the demo passes: the bars of `models fetch`
        fetched.append(name)
        fetch_weights(config, name)

    reason = stems_unavailable_reason(config, "htdemucs", fetch)

    assert fetched == ["htdemucs"]
    assert reason is not None and "refused" in reason, reason
    assert list((tmp_path / "repo").iterdir()) == []
    airgapped = load_settings(demucs_repo=tmp_path / "repo", fetch_models=False,
                              models_url=host.base_url)  # fmt: skip
    reason = stems_unavailable_reason(airgapped, "htdemucs", fetch)
    assert fetched == ["htdemucs"] and reason is not None and "not found" in reason, reason


def test_the_weight_host_passes_the_destination_policy(tmp_path: Path, host: LoopbackServer
                                                       ) -> None:  # fmt: skip
    catalog, _name = _released_tiny_model(tmp_path, host)
    with pytest.raises(DestinationRefusedError):  # loopback, not allowed by default
        weights.fetch_model("htdemucs", repo=tmp_path / "repo", base_url=host.base_url,
                            catalog=catalog)  # fmt: skip
    assert (host.requests == [] and not (tmp_path / "repo").exists()) or not any(
        (tmp_path / "repo").iterdir())
