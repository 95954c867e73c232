"""CLI commands for the dashboard and monitoring: serve (the web dashboard under uvicorn) and
health (the same checks as /healthz, as an exit code for a monitor)."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from soundforge import operations
from soundforge.cli.common import add_json_flag, print_json, settings
from soundforge.errors import ConfigError

SHUTDOWN_GRACE_S = 5


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve", help="run the web dashboard and JSON API (the `web` extra)"
    )
    parser.add_argument("--host", default=None,
                        help="address to bind (default: SOUNDFORGE_WEB_HOST, else 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None,
                        help="port (default: SOUNDFORGE_WEB_PORT, else 8470)")  # fmt: skip
    parser.set_defaults(handler=run_serve)

    parser = subparsers.add_parser(
        "health", help="check database, schema and workers; exit 0 healthy, 1 degraded, 2 down"
    )
    add_json_flag(parser)
    parser.set_defaults(handler=run_health)


def run_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from soundforge.web.app import build_app
    except ImportError as error:
        raise ConfigError(
            f"the dashboard needs the web extra ({error.name} is missing): "
            "pip install 'soundforge[web]'"
        ) from None
    config = settings()
    if not args.verbose:
        logging.getLogger().setLevel(config.log_level.upper())
    host = args.host or config.web_host
    port = args.port if args.port is not None else config.web_port
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port {port} is not a TCP port")
    # Live (SSE) streams never end by themselves: a stop gives them a few seconds, not forever.
    uvicorn.run(build_app(config), host=host, port=port, log_level=config.log_level.lower(),
                proxy_headers=False, server_header=False,
                timeout_graceful_shutdown=SHUTDOWN_GRACE_S)  # fmt: skip
    return 0


def run_health(args: argparse.Namespace) -> int:
    config = settings()
    report = operations.health_of(config.database_url, config.heartbeat_interval_s)
    if args.json:
        print_json(report.to_dict())
    else:
        print(report.health.name.lower())
        for reason in report.reasons:
            print(f"  {reason}")
    return int(report.health)
