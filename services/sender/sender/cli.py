"""`python -m sender ambiguous list | show BATCH_ID | fail BATCH_ID | resend BATCH_ID`

The operator's commands for ambiguous batches without the HTTP API, on the same code (`resolution.py`).
Prints JSON; exits 2 when a command is refused. The events a command produces wait in the outbox until a
running sender relays them.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import Any

import orjson

from sender.app import SCHEMA, batch_view, detail_view, resolved_view
from sender.limits import TrafficLimits
from sender.locks import BatchLocks
from sender.mitto import MittoClient
from sender.resolution import ResolutionRefused, Resolver
from sender.sending import BatchSender
from sender.settings import SenderSettings
from shared import db


class NoMetrics:
    def batch_done(self, status: str, recipients: int) -> None:
        return None

    def provider_call(self, outcome: str, seconds: float) -> None:
        return None

    def retried(self, reason: str) -> None:
        return None


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m sender ambiguous", description="Ambiguous batches of the send ledger"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="ambiguous batches, oldest batch id first")
    listing.add_argument("--limit", type=int, default=100)
    listing.add_argument("--after", default=None, help="continue after this batch id")
    for name, text in (
        ("show", "one batch with the recipients still ambiguous"),
        ("fail", "fail its remaining recipients: they may have been delivered and are never sent again"),
        ("resend", "send its remaining recipients again: only when you know the batch did not go out"),
    ):
        commands.add_parser(name, help=text).add_argument("batch_id")
    return parser.parse_args(argv)


async def run(settings: SenderSettings, args: argparse.Namespace) -> tuple[int, Any]:
    pool = await db.create_pool(settings.database_url, SCHEMA, min_size=1, max_size=2)
    mitto = MittoClient(
        settings.mitto_base_url,
        settings.mitto_api_key,
        connect_timeout=settings.mitto_connect_timeout_s,
        read_timeout=settings.mitto_read_timeout_s,
        keepalive_expiry=settings.mitto_keepalive_expiry_s,
    )
    locks = BatchLocks(settings.database_url)
    limits = TrafficLimits(settings.mitto_messages_per_second, settings.mitto_burst_seconds, 1)
    sender = BatchSender(lambda: pool, mitto, settings, NoMetrics(), locks, limits)
    resolver = Resolver(lambda: pool, sender, locks, mitto, settings.lookup_concurrency)
    try:
        if args.command == "list":
            return 0, [batch_view(b) for b in await resolver.list_batches(args.limit, args.after)]
        if args.command == "show":
            return 0, detail_view(await resolver.detail(args.batch_id))
        return 0, resolved_view(await resolver.resolve(args.batch_id, args.command))
    except ResolutionRefused as exc:
        return 2, {"code": exc.code, "message": exc.message}
    finally:
        await locks.close()
        await mitto.aclose()
        await pool.close()


def main(argv: Sequence[str]) -> int:
    args = parse(argv)
    code, body = asyncio.run(run(SenderSettings(), args))
    print(
        orjson.dumps(body, option=orjson.OPT_INDENT_2).decode(), file=sys.stdout if code == 0 else sys.stderr
    )
    return code
