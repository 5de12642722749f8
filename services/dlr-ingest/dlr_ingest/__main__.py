"""`python -m dlr_ingest [serve | migrate]`, and `python -m dlr_ingest refresh ...`: one status refresh from
the command line, printing its summary as JSON (exit status 1 when it could not run or record its results)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

import orjson
import uvicorn
from prometheus_client import CollectorRegistry

from dlr_ingest.app import MIGRATIONS, SCHEMA, create_app
from dlr_ingest.publisher import publisher_for
from dlr_ingest.refresh import Refresher, RefreshFailed
from dlr_ingest.settings import DlrIngestSettings
from shared.logs import configure_logging
from shared.runner import main as serve


def refresh_command(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="dlr-ingest refresh",
        description="Ask Mitto for the status of messages sent without a final status, and publish it.",
    )
    parser.add_argument("--older-than-minutes", type=int, required=True)
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("--campaign", help="only this campaign id")
    scope.add_argument("--bulk-id", help="only this Mitto bulk id")
    parser.add_argument("--limit", type=int, default=1000)
    args = parser.parse_args(argv)
    if args.older_than_minutes < 0 or args.limit < 1:
        parser.error("--older-than-minutes must be >= 0 and --limit >= 1")
    # The refresh needs the broker, the projector and Mitto, not the database.
    settings = DlrIngestSettings(database_url=os.environ.get("DATABASE_URL", ""))
    configure_logging("dlr-ingest", settings.log_level, settings.log_json)
    if args.limit > settings.refresh_max_limit:
        parser.error(f"--limit is at most {settings.refresh_max_limit} (REFRESH_MAX_LIMIT)")
    return asyncio.run(_refresh(settings, args))


async def _refresh(settings: DlrIngestSettings, args: argparse.Namespace) -> int:
    publisher = publisher_for(settings)
    await publisher.start()
    refresher = Refresher(settings, publisher.publish, CollectorRegistry())
    try:
        summary = await refresher.run(
            older_than_minutes=args.older_than_minutes,
            limit=args.limit,
            campaign_id=args.campaign,
            bulk_id=args.bulk_id,
        )
    except RefreshFailed as exc:
        sys.stderr.write(orjson.dumps({"code": exc.code, "message": exc.message}).decode() + "\n")
        return 1
    finally:
        await refresher.aclose()
        await publisher.stop()
    sys.stdout.write(orjson.dumps(summary.as_json()).decode() + "\n")
    return 0


def serve_workers(settings: DlrIngestSettings) -> None:
    """Several processes accept on one port (the webhook is CPU-bound per report). Each builds its own app
    from the environment: its own producer (a 202 still means acknowledged), replay cache and consumer (one
    group member each; the outbox relay runs in whichever holds its lock)."""
    configure_logging("dlr-ingest", settings.log_level, settings.log_json)
    uvicorn.run(
        "dlr_ingest.app:app_from_environment",
        factory=True,
        workers=settings.workers,
        host=settings.http_host,
        port=settings.http_port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=10,
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["refresh"]:
        raise SystemExit(refresh_command(args[1:]))
    if args[:1] in ([], ["serve"]):
        settings = DlrIngestSettings()
        if settings.workers > 1:
            serve_workers(settings)
            return
    serve("dlr-ingest", SCHEMA, MIGRATIONS, DlrIngestSettings, create_app, args)


if __name__ == "__main__":
    main()
