"""The Procrastinate app: `procrastinate --app=soundforge.app.app defer|worker|shell|
healthchecks` works with it.

Importing this module reads no settings and connects nowhere: `app` is built bare and reads the
settings (`DATABASE_URL`, pool sizes, maintenance crons) the first time it is used, when it is
opened or its connector is first asked for a connection. An invalid setting therefore surfaces
there, as `ConfigError`'s one line (the Procrastinate CLI prints it and exits 1). Our own edges
(`soundforge worker`, tests, benches) pass the settings they already hold to `build_app`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg_pool
from procrastinate import App, Blueprint, PsycopgConnector
from procrastinate.connector import BaseConnector

from soundforge.pool_checks import check_async_connection
from soundforge.redact import install_log_redaction
from soundforge.settings import Settings, load_settings


def _queue_pool(**arguments: Any) -> psycopg_pool.AsyncConnectionPool:
    """The queue's pool, checking a connection before lending it only when the server has
    spoken to it (`pool_checks`): Procrastinate's own check costs two round trips a job."""
    return psycopg_pool.AsyncConnectionPool(**{**arguments, "check": check_async_connection})


class _SettingsConnector(PsycopgConnector):
    """A `PsycopgConnector` whose connection arguments come from `resolve()` on first use."""

    def __init__(self, resolve: Callable[[], dict[str, Any]]) -> None:
        super().__init__(pool_factory=_queue_pool)
        self._resolve = resolve
        self._resolved = False

    def _resolve_once(self) -> None:
        if not self._resolved:
            self._pool_args.update(self._resolve())
            self._resolved = True

    async def open_async(self, pool: psycopg_pool.AsyncConnectionPool | None = None) -> None:
        self._resolve_once()
        await super().open_async(pool)

    def get_sync_connector(self) -> BaseConnector:
        self._resolve_once()
        return super().get_sync_connector()


class SoundForgeApp(App):
    """The app with SoundForge's tasks; settings are read by `configure`, once."""

    def __init__(self, settings: Settings | None = None) -> None:
        self._settings: Settings | None = None
        super().__init__(connector=_SettingsConnector(self._connection_arguments))
        from soundforge.tasks import blueprint

        _bind_tasks(self, blueprint)
        if settings is not None:
            self.configure(settings)

    def configure(self, settings: Settings | None = None) -> Settings:
        """Read the settings (unless given) and schedule the maintenance tasks; later calls
        return the settings of the first."""
        if self._settings is None:
            from soundforge.tasks.maintenance import register_schedules

            self._settings = settings or load_settings()
            install_log_redaction()  # any worker (`procrastinate worker` too) logs URLs masked
            register_schedules(self, self._settings)
        return self._settings

    def _connection_arguments(self) -> dict[str, Any]:
        settings = self.configure()
        return {
            "conninfo": settings.database_url,
            "min_size": 1,
            "max_size": settings.queue_pool_max_size,
            "kwargs": {"application_name": "soundforge-queue"},
        }


def _bind_tasks(app: App, blueprint: Blueprint) -> None:
    """Register the blueprint's tasks under their own names (`soundforge.import`, ...).

    `App.add_tasks_from` insists on a `namespace:` prefix, which would rename the documented
    task names; this does the same registration without it.
    """
    for name, task in blueprint.tasks.items():
        task.blueprint = app
        app.tasks[name] = task


def build_app(settings: Settings | None = None) -> SoundForgeApp:
    """An app with the given settings, or one that reads them when first used."""
    return SoundForgeApp(settings)


app = build_app()
