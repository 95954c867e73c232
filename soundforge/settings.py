"""Settings, read once at the edge (CLI, worker start) and passed down; nothing deeper reads the
environment.

Sources, highest first: explicit keyword arguments, environment variables (`DATABASE_URL` or
`SOUNDFORGE_DATABASE_URL`, the rest `SOUNDFORGE_*`), then the env file named by
`SOUNDFORGE_ENV_FILE` (default `/etc/soundforge/soundforge.env` when it exists).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from soundforge.errors import ConfigError
from soundforge.separation.weights import DEFAULT_WEIGHTS_URL
from soundforge.settings_source import ENV_PREFIX, env_file_path
from soundforge.source_policy import parse_networks
from soundforge.storage import IMPORTS_DIR


class Settings(BaseSettings):
    """Every knob of SoundForge. Field `foo_bar` is the variable `SOUNDFORGE_FOO_BAR`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="ignore",
        populate_by_name=True,
        validate_default=True,
    )

    database_url: str = Field(
        default="postgresql://postgres@127.0.0.1:5432/soundforge",
        validation_alias=AliasChoices("DATABASE_URL", "SOUNDFORGE_DATABASE_URL", "database_url"),
    )
    db_pool_min_size: int = Field(default=1, ge=0)
    db_pool_max_size: int = Field(default=10, ge=1)
    """The most connections a process's own pool opens (a worker's task statements, the web
    dashboard). A job borrows one per statement, so fewer than a worker's concurrency only make
    statements wait their turn."""
    queue_pool_max_size: int = Field(default=6, ge=2)
    """The most connections Procrastinate's pool opens in a worker (fetching, finishing and
    aborting queue jobs); its `LISTEN` connection is one more, outside the pool."""
    storage_path: Path = Path("/var/lib/soundforge")
    storage_orphan_grace_s: float = Field(default=3600.0, ge=0)
    # Where files live: `file:///var/lib/soundforge` or `s3://bucket/prefix` (default: the
    # local folder `storage_path`). S3 settings left unset come from the usual AWS variables.
    storage_url: str | None = None
    s3_endpoint_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("SOUNDFORGE_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
                                      "AWS_ENDPOINT_URL", "s3_endpoint_url"),
    )  # fmt: skip
    s3_region: str | None = Field(
        default=None,
        validation_alias=AliasChoices("SOUNDFORGE_S3_REGION", "AWS_REGION", "AWS_DEFAULT_REGION",
                                      "s3_region"),
    )  # fmt: skip
    s3_access_key_id: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("SOUNDFORGE_S3_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID",
                                      "s3_access_key_id"),
    )  # fmt: skip
    s3_secret_access_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("SOUNDFORGE_S3_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY",
                                      "s3_secret_access_key"),
    )  # fmt: skip
    s3_session_token: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("SOUNDFORGE_S3_SESSION_TOKEN", "AWS_SESSION_TOKEN",
                                      "s3_session_token"),
    )  # fmt: skip
    s3_max_retries: int = Field(default=5, ge=0)
    # A stalled transfer fails after `s3_read_timeout_s` without a byte; one request (a whole
    # object's GET, one upload part) may take at most `s3_request_timeout_s`.
    s3_read_timeout_s: float = Field(default=60.0, gt=0)
    s3_request_timeout_s: float = Field(default=1800.0, gt=0)
    s3_retry_timeout_s: float = Field(default=60.0, gt=0)
    s3_part_size_bytes: int = Field(default=8 * 1024 * 1024, ge=5 * 1024 * 1024)
    s3_upload_concurrency: int = Field(default=4, ge=1)
    # The local cache of stored files on a host that uses object storage (LRU, size-bounded).
    cache_path: Path = Path("/var/cache/soundforge")
    cache_max_bytes: int = Field(default=20 * 1024**3, ge=0)
    # SoundForge's own temporary files (partial downloads, separation scratch) left by a crash.
    storage_temp_grace_s: float = Field(default=6 * 3600.0, ge=0)

    # Limits on every decoded input (see soundforge.audio_limits).
    max_duration_s: float = Field(default=7200.0, gt=0)
    max_decoded_bytes: int = Field(default=4 << 30, ge=1 << 20)

    # Queue: attempts per stage (1 = no retry) and backoff base.
    download_attempts: int = Field(default=3, ge=1, le=50)
    separate_attempts: int = Field(default=3, ge=1, le=50)
    analyze_attempts: int = Field(default=3, ge=1, le=50)
    retry_wait_s: float = Field(default=5.0, ge=0)
    retry_exponential_base: float = Field(default=2.0, ge=1)

    # Separation (demucs).
    demucs_model: str = "htdemucs"
    demucs_repo: Path | None = None
    torch_threads: int = Field(default=0, ge=0, description="0 = torch's default")
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    separation_batch: int = Field(default=0, ge=0, le=1024,
                                  description="segments per model call; 0 = by device")
    separation_jobs_together: int = Field(
        default=0, ge=0, le=64,
        description="separations one engine process runs in one batch stream (a GPU worker); "
        "0 = 4 when the device is or finds a CUDA GPU, else 1",
    )
    shifts: int = Field(default=1, ge=0, le=20)
    overlap: float = Field(default=0.25, ge=0.0, lt=1.0)
    stem_format: Literal["flac", "wav"] = "flac"
    fetch_models: bool = True
    """Fetch missing released weights on first use (False: air-gapped, fail with a message)."""
    models_url: str = DEFAULT_WEIGHTS_URL
    """The weight host's root (demucs' own, or a mirror in the same layout)."""

    # Sources.
    spotify_client_id: str | None = None
    spotify_client_secret: str | None = None
    spotify_api_url: str = "https://api.spotify.com/v1"
    spotify_auth_url: str = "https://accounts.spotify.com/api/token"
    resolver: Literal["yt-dlp", "spotdl"] = "yt-dlp"
    resolver_search_template: str = "ytsearch5:{query}"
    max_download_bytes: int = Field(default=500 * 1024 * 1024, ge=1024)
    max_import_bytes: int = Field(default=2 * 1024**3, ge=1024)
    connect_timeout_s: float = Field(default=10.0, gt=0)
    read_timeout_s: float = Field(default=30.0, gt=0)
    max_redirects: int = Field(default=5, ge=0)
    duration_tolerance_s: float = Field(default=5.0, ge=0)
    max_expanded_tracks: int = Field(default=10_000, ge=1)
    """How many tracks one album or playlist may expand into (Spotify's own playlist limit)."""
    allowed_networks: str = ""
    """Comma-separated CIDRs that outgoing connections may reach although the destination
    policy refuses their kind (loopback, private, link-local...): a LAN NAS, tests' servers."""
    import_roots: str | None = None
    """Comma-separated folders local sources may come from; default `<storage_path>/imports`."""

    # Supervisor.
    download_processes: int = Field(default=1, ge=0)
    download_concurrency: int = Field(default=4, ge=1)
    processing_processes: int = Field(default=1, ge=0)
    processing_concurrency: int = Field(default=1, ge=1)
    analysis_processes: int = Field(default=1, ge=0)
    analysis_concurrency: int = Field(default=1, ge=1)
    recycle_after_jobs: int = Field(default=100, ge=0, description="0 = never")
    download_time_limit_s: float = Field(default=1800.0, gt=0)
    separate_time_limit_s: float = Field(default=3600.0, gt=0)
    analyze_time_limit_s: float = Field(default=900.0, gt=0)
    shutdown_grace_s: float = Field(default=60.0, ge=0)
    stalled_after_s: float = Field(default=1800.0, gt=0)
    prune_after_days: int = Field(default=7, ge=1)
    cleanup_cron: str = "0 3 * * *"
    rescue_cron: str = "*/5 * * * *"
    prune_cron: str = "30 3 * * *"
    maintenance_group: Literal["download", "processing", "analysis"] = "download"
    # This host's role: the queues its supervisor serves (a GPU host: `processing`; a CPU
    # host: `download,analysis,maintenance`); a group not named here runs no process.
    queues: str = "download,processing,analysis,maintenance"
    heartbeat_interval_s: float = Field(default=10.0, gt=0)
    poll_interval_s: float = Field(default=5.0, gt=0)
    restart_backoff_s: float = Field(default=1.0, ge=0)
    restart_backoff_max_s: float = Field(default=60.0, ge=0)
    engine_recycle_after_jobs: int = Field(default=5000, ge=0, description="0 = never")
    engine_max_rss_mb: int = Field(default=4096, ge=0, description="0 = no limit")
    log_level: str = "INFO"

    @field_validator("db_pool_max_size")
    @classmethod
    def _pool_bounds(cls, value: int, info: ValidationInfo) -> int:
        smallest = info.data.get("db_pool_min_size")
        if smallest is not None and value < smallest:
            raise ValueError(f"must be at least SOUNDFORGE_DB_POOL_MIN_SIZE ({smallest})")
        return value

    @field_validator("storage_url")
    @classmethod
    def _storage_url_scheme(cls, value: str | None) -> str | None:
        if value and not value.startswith(("file://", "s3://")):
            raise ValueError("must be file:///path or s3://bucket[/prefix]")
        return value or None

    # Web dashboard (`soundforge serve`).
    web_host: str = "127.0.0.1"
    web_port: int = Field(default=8470, ge=1, le=65535)
    web_token: SecretStr | None = None
    """Writes (add, cancel, retry, delete) need it; unset: the dashboard is read-only."""
    web_writes_per_minute: int = Field(default=30, ge=1)
    web_page_size: int = Field(default=50, ge=1, le=1000)

    @field_validator("allowed_networks")
    @classmethod
    def _allowed_networks_are_cidrs(cls, value: str) -> str:
        parse_networks(value)  # ValueError names the bad entry
        return value

    @field_validator("import_roots")
    @classmethod
    def _import_roots_are_absolute(cls, value: str | None) -> str | None:
        if value is not None:
            relative = [part for part in value.split(",") if part.strip()
                        and not Path(part.strip()).is_absolute()]  # fmt: skip
            if relative:
                raise ValueError(f"{relative[0].strip()!r} is not an absolute folder")
        return value

    @property
    def import_root_paths(self) -> tuple[Path, ...]:
        """The import roots as paths (the default when the setting is not given)."""
        if self.import_roots is None:
            return (self.storage_path / IMPORTS_DIR,)
        return tuple(Path(part.strip()) for part in self.import_roots.split(",") if part.strip())

    @field_validator("database_url")
    @classmethod
    def _database_url_is_postgres(cls, value: str) -> str:
        if not value.startswith(("postgresql://", "postgres://")) and "=" not in value:
            raise ValueError("must be a postgresql:// URL or a libpq key=value string")
        return value


def _variable_name(field_name: str) -> str:
    if field_name == "database_url":
        return "DATABASE_URL"
    return ENV_PREFIX + field_name.upper()


def load_settings(**overrides: Any) -> Settings:
    """Read the settings from the environment and the env file; keyword overrides win.

    An invalid value raises `ConfigError` naming the variable, with no chained pydantic error
    (raised outside the handler), so tools that print every cause still print one line.
    """
    try:
        return Settings(_env_file=env_file_path(), **overrides)  # type: ignore[call-arg]
    except ValidationError as error:
        problems = []
        for detail in error.errors():
            field = str(detail["loc"][0]) if detail["loc"] else "?"
            problems.append(f"{_variable_name(field)}: {detail['msg']}")
    raise ConfigError("invalid setting " + "; ".join(problems))
