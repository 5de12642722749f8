"""Command line of every service: `serve` (default) runs the HTTP app, `migrate` applies migrations."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable, Sequence
from typing import TypeVar

import uvicorn
from fastapi import FastAPI

from shared import db
from shared.config import ServiceSettings
from shared.logs import configure_logging

S = TypeVar("S", bound=ServiceSettings)


def main(
    name: str,
    schema: str,
    migrations: Sequence[str],
    settings_factory: Callable[[], S],
    app_factory: Callable[[S], FastAPI],
    argv: Sequence[str] | None = None,
) -> None:
    parser = argparse.ArgumentParser(prog=name)
    parser.add_argument("command", nargs="?", default="serve", choices=["serve", "migrate"])
    args = parser.parse_args(argv)
    settings = settings_factory()
    configure_logging(name, settings.log_level, settings.log_json)
    if args.command == "migrate":
        if not migrations:
            print(f"{name}: no database, nothing to migrate")
            return
        applied = asyncio.run(db.apply_migrations(settings.database_url, schema, migrations))
        print(f"{name}: applied {len(applied)} migration(s)" + "".join(f"\n  {m}" for m in applied))
        return
    uvicorn.run(
        app_factory(settings),
        host=settings.http_host,
        port=settings.http_port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=10,
    )
