"""The Procrastinate app: `procrastinate --app=soundforge.app.app defer|worker|shell|
healthchecks` works with it. Its connector is built from the settings (`DATABASE_URL`) the
first time the module is imported; nothing connects until the app is opened."""

from __future__ import annotations

from procrastinate import App, Blueprint, PsycopgConnector

from soundforge.redact import install_log_redaction
from soundforge.settings import Settings, load_settings


def _bind_blueprint(app: App, blueprint: Blueprint) -> None:
    """Register the blueprint's tasks under their own names (`soundforge.import`, ...).

    `App.add_tasks_from` insists on a `namespace:` prefix, which would rename the documented
    task names; this does the same registration without it.
    """
    for name, task in blueprint.tasks.items():
        task.blueprint = app
        app.tasks[name] = task
    for periodic in blueprint.periodic_registry.periodic_tasks.values():
        app.periodic_registry.register_task(
            task=periodic.task,
            cron=periodic.cron,
            periodic_id=periodic.periodic_id,
            configure_kwargs=periodic.configure_kwargs,
        )


def build_app(settings: Settings | None = None) -> App:
    settings = settings or load_settings()
    install_log_redaction()  # any worker (`procrastinate worker` too) logs URLs masked
    from tasks import blueprint

    procrastinate_app = App(
        connector=PsycopgConnector(
            conninfo=settings.database_url,
            min_size=1,
            max_size=max(4, settings.download_concurrency + 2),
            kwargs={"application_name": "soundforge-queue"},
        ),
    )
    _bind_blueprint(procrastinate_app, blueprint)
    return procrastinate_app


app = build_app()
