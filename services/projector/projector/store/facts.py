"""SQL of the projection for tenant and campaign facts: one statement per event (a handful per campaign)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from shared.db import Conn


async def upsert_tenant(
    conn: Conn, tenant_id: str, name: str, channel: str, region: str, sender_id: str | None
) -> None:
    await conn.execute(
        """INSERT INTO tenants (id, name, channel, default_region, sender_id) VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, channel = EXCLUDED.channel,
               default_region = EXCLUDED.default_region, sender_id = EXCLUDED.sender_id""",
        tenant_id,
        name,
        channel,
        region,
        sender_id,
    )


async def issue_key(conn: Conn, key_hash: str, key_id: str, tenant_id: str) -> None:
    await conn.execute(
        "INSERT INTO api_keys (key_hash, key_id, tenant_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        key_hash,
        key_id,
        tenant_id,
    )


async def revoke_key(conn: Conn, key_id: str) -> None:
    await conn.execute("UPDATE api_keys SET revoked = true WHERE key_id = $1", key_id)


async def set_subscription(conn: Conn, tenant_id: str, status: str) -> None:
    await conn.execute("UPDATE tenants SET subscription_status = $2 WHERE id = $1", tenant_id, status)


async def add_tenant_credits(conn: Conn, tenant_id: str, credits: int) -> None:
    await conn.execute(
        """INSERT INTO tenants (id, name, channel, default_region, credits_topped_up)
           VALUES ($1, '', 'retail', '', $2)
           ON CONFLICT (id) DO UPDATE SET credits_topped_up = tenants.credits_topped_up + EXCLUDED.credits_topped_up""",
        tenant_id,
        credits,
    )


# --- campaign.events ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CampaignFields:
    name: str
    text: str
    message_type: str
    sender_id: str | None
    offer_url: str | None
    at: datetime


async def create_campaign(
    conn: Conn, campaign_id: str, tenant_id: str | None, channel: str, f: CampaignFields
) -> None:
    await conn.execute(
        """INSERT INTO campaigns (id, tenant_id, name, message_text, message_type, channel, sender_id,
                                  offer_url, created_at, updated_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)
           ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, message_text = EXCLUDED.message_text,
               message_type = EXCLUDED.message_type, channel = EXCLUDED.channel,
               sender_id = EXCLUDED.sender_id, offer_url = EXCLUDED.offer_url,
               created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at""",
        campaign_id,
        tenant_id,
        f.name,
        f.text,
        f.message_type,
        channel,
        f.sender_id,
        f.offer_url,
        f.at,
    )


async def update_campaign(conn: Conn, campaign_id: str, f: CampaignFields) -> None:
    await conn.execute(
        """UPDATE campaigns SET name = $2, message_text = $3, message_type = $4, sender_id = $5,
               offer_url = $6, updated_at = $7
           WHERE id = $1""",
        campaign_id,
        f.name,
        f.text,
        f.message_type,
        f.sender_id,
        f.offer_url,
        f.at,
    )


@dataclass(frozen=True)
class StatusChange:
    status: str
    at: datetime
    run_token: str | None = None
    run_kind: str | None = None
    run_total: int | None = None
    batch_count: int | None = None
    total: int | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    scheduled_at: datetime | None = None


async def set_campaign_status(conn: Conn, campaign_id: str, tenant_id: str | None, s: StatusChange) -> None:
    """A status event of campaign.events. A new run clears the finish time and the last refusal."""
    await conn.execute(
        """INSERT INTO campaigns (id, tenant_id, status, run_token, run_kind, run_total, batch_count, total,
                                  started_at, finished_at, scheduled_at, updated_at)
           VALUES ($1, $2, $3, $4, $5, coalesce($6, 0), coalesce($7, 0), coalesce($8, 0), $9, $10, $11, $12)
           ON CONFLICT (id) DO UPDATE SET
               status = EXCLUDED.status,
               run_token = coalesce(EXCLUDED.run_token, campaigns.run_token),
               run_kind = coalesce(EXCLUDED.run_kind, campaigns.run_kind),
               run_total = CASE WHEN $6::int IS NULL THEN campaigns.run_total ELSE EXCLUDED.run_total END,
               batch_count = CASE WHEN $7::int IS NULL THEN campaigns.batch_count ELSE EXCLUDED.batch_count END,
               total = greatest(campaigns.total, EXCLUDED.total),
               started_at = coalesce(campaigns.started_at, EXCLUDED.started_at),
               finished_at = CASE WHEN EXCLUDED.status = 'sending' THEN NULL
                                  ELSE coalesce(EXCLUDED.finished_at, campaigns.finished_at) END,
               scheduled_at = coalesce(EXCLUDED.scheduled_at, campaigns.scheduled_at),
               last_enqueue_error_code = CASE WHEN EXCLUDED.status = 'sending' THEN NULL
                                              ELSE campaigns.last_enqueue_error_code END,
               last_enqueue_error_message = CASE WHEN EXCLUDED.status = 'sending' THEN NULL
                                                 ELSE campaigns.last_enqueue_error_message END,
               last_enqueue_error_at = CASE WHEN EXCLUDED.status = 'sending' THEN NULL
                                            ELSE campaigns.last_enqueue_error_at END,
               updated_at = EXCLUDED.updated_at""",
        campaign_id,
        tenant_id,
        s.status,
        s.run_token,
        s.run_kind,
        s.run_total,
        s.batch_count,
        s.total,
        s.started_at,
        s.finished_at,
        s.scheduled_at,
        s.at,
    )


async def record_run(conn: Conn, run_token: str, campaign_id: str, kind: str) -> None:
    await conn.execute(
        "INSERT INTO runs (run_token, campaign_id, kind) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        run_token,
        campaign_id,
        kind,
    )


async def set_enqueue_error(
    conn: Conn, campaign_id: str, tenant_id: str | None, code: str, message: str, at: datetime
) -> None:
    await conn.execute(
        """INSERT INTO campaigns (id, tenant_id, last_enqueue_error_code, last_enqueue_error_message,
                                  last_enqueue_error_at, updated_at)
           VALUES ($1, $2, $3, $4, $5, $5)
           ON CONFLICT (id) DO UPDATE SET last_enqueue_error_code = EXCLUDED.last_enqueue_error_code,
               last_enqueue_error_message = EXCLUDED.last_enqueue_error_message,
               last_enqueue_error_at = EXCLUDED.last_enqueue_error_at, updated_at = EXCLUDED.updated_at""",
        campaign_id,
        tenant_id,
        code,
        message,
        at,
    )


CREDIT_COLUMNS = frozenset({"credits_reserved", "credits_debited", "credits_released"})


async def add_campaign_credits(
    conn: Conn, campaign_id: str, tenant_id: str | None, column: str, credits: int
) -> None:
    if column not in CREDIT_COLUMNS:
        raise ValueError(f"not a credit column: {column}")
    await conn.execute(
        f"""INSERT INTO campaigns (id, tenant_id, {column}) VALUES ($1, $2, $3)
            ON CONFLICT (id) DO UPDATE SET {column} = campaigns.{column} + EXCLUDED.{column}""",
        campaign_id,
        tenant_id,
        credits,
    )
