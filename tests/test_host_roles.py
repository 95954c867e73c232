"""Per-host roles: which worker groups `soundforge run` starts for the queues a host serves, and
the flags that set them."""

from __future__ import annotations

from pathlib import Path

import pytest

from soundforge.errors import ConfigError
from soundforge.settings import load_settings
from soundforge.supervisor import worker_groups
from tests.cli_runner import run_cli


def _running(**settings: object) -> dict[str, tuple[tuple[str, ...], int, int]]:
    groups = worker_groups(load_settings(**settings))
    return {group.name: (group.queues, group.processes, group.concurrency)
            for group in groups if group.processes}  # fmt: skip


def test_a_gpu_host_runs_only_processing_and_no_maintenance() -> None:
    assert _running(queues="processing", processing_processes=2) == {
        "processing": (("processing",), 2, 1)
    }


def test_a_cpu_host_runs_download_and_analysis_with_maintenance_in_its_group() -> None:
    assert _running(queues="download,analysis,maintenance", download_concurrency=8) == {
        "download": (("download", "maintenance"), 1, 8),
        "analysis": (("analysis",), 1, 1),
    }
    # the maintenance group is not run here: maintenance joins the first group that is
    assert _running(queues="analysis,maintenance", maintenance_group="download") == {
        "analysis": (("analysis", "maintenance"), 1, 1),
    }


def test_every_queue_by_default() -> None:
    assert set(_running()) == {"download", "processing", "analysis"}


@pytest.mark.parametrize(("settings", "message"), [
    ({"queues": "gpu"}, "SOUNDFORGE_QUEUES=gpu: choose from"),
    ({"queues": "maintenance"}, "no worker processes for the queues maintenance"),
    ({"queues": "processing", "processing_processes": 0}, "no worker processes"),
])  # fmt: skip
def test_a_role_without_workers_is_refused(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        worker_groups(load_settings(**settings))


@pytest.mark.parametrize(("flags", "message"), [
    (["--processes", "gpu=1"], "--processes 'gpu=1': expected GROUP=N"),
    (["--concurrency", "download=many"], "--concurrency 'download=many': expected GROUP=N"),
    (["--queues", "download", "--processes", "download=0"], "no worker processes"),
])  # fmt: skip
def test_run_refuses_bad_role_flags_in_one_line(
    cli_env: dict[str, str], tmp_path: Path, flags: list[str], message: str
) -> None:
    result = run_cli("run", *flags, env=cli_env)
    assert result.returncode != 0
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, (
        result.stderr
    )
