"""Operator commands: `rebuild` (replay into a fresh schema and swap it in, or compare it), `checksum`
(the live read models, optionally against another schema), `reconcile` (the reconciliation report).
`serve` and `migrate` are every service's (shared.runner)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from projector import reports
from projector.rebuild import RebuildRefused, checksum, rebuild
from projector.settings import ProjectorSettings

COMMANDS = ("rebuild", "checksum", "reconcile")


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="projector")
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("rebuild", help="rebuild every read model from offset 0 and swap it in atomically")
    r.add_argument("--dry-run", action="store_true", help="build and compare with the live schema, no swap")
    r.add_argument("--compare", action="store_true", help="checksum both schemas at the same positions")
    r.add_argument(
        "--keep", action="store_true", help="keep the retired (or, with --dry-run, the rebuilt) schema"
    )
    r.add_argument("--workers", type=int, help="replay processes (default REBUILD_WORKERS)")
    c = sub.add_parser("checksum", help="checksums of the live read models")
    c.add_argument(
        "--against", metavar="SCHEMA", help="compare with this schema (a kept rebuild or retired one)"
    )
    g = sub.add_parser("reconcile", help="the reconciliation report")
    g.add_argument("--delivery-hours", type=float, default=24.0)
    g.add_argument("--processing-minutes", type=float, default=15.0)
    g.add_argument("--stuck-minutes", type=float, default=30.0)
    g.add_argument("--limit", type=int, default=50)
    args = parser.parse_args(argv)
    settings = ProjectorSettings()
    # The answer goes to stdout as JSON; progress and warnings to stderr.
    logging.basicConfig(
        stream=sys.stderr, level=settings.log_level, format="%(asctime)s %(levelname)s %(message)s"
    )
    try:
        out, code = asyncio.run(_run(args, settings))
    except RebuildRefused as exc:
        print(f"projector {args.command}: {exc}", file=sys.stderr)
        return 2
    print(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
    return code


async def _run(args: argparse.Namespace, settings: ProjectorSettings) -> tuple[dict[str, Any], int]:
    if args.command == "rebuild":
        result = await rebuild(
            settings.database_url,
            settings.kafka.bootstrap_servers,
            swap=not args.dry_run,
            compare=args.compare or args.dry_run,
            keep=args.keep,
            poll_records=settings.poll_records,
            workers=args.workers or settings.rebuild_workers,
        )
        return result.summary(), 0 if result.equal in (None, True) else 1
    if args.command == "checksum":
        out = await checksum(settings.database_url, args.against)
        return out, 0 if out.get("equal", True) else 1
    conn = await asyncpg.connect(settings.database_url, server_settings={"search_path": "projector,public"})
    try:
        report = await reports.reconciliation(
            conn,
            datetime.now(UTC),
            delivery_hours=args.delivery_hours,
            processing_minutes=args.processing_minutes,
            stuck_minutes=args.stuck_minutes,
            limit=args.limit,
        )
    finally:
        await conn.close()
    return report, 0
