-- Read models, built only from the topics. Write design: a recipient row is inserted once, when its
-- send result arrives (queued and processing recipients live in their batch row); delivery reports live
-- in their own table keyed by provider message id and are joined on read, so a report that arrives
-- before its send result simply waits there. Campaign counters move by transitions, never recounts.

CREATE TABLE tenants (
    id             uuid PRIMARY KEY,
    name           text NOT NULL,
    channel        text NOT NULL,
    default_region text NOT NULL
);

CREATE TABLE api_keys (
    key_hash  text PRIMARY KEY,
    key_id    text    NOT NULL UNIQUE,
    tenant_id uuid    NOT NULL,
    revoked   boolean NOT NULL DEFAULT false
);

CREATE TABLE campaigns (
    id              uuid PRIMARY KEY,
    tenant_id       uuid        NOT NULL,
    name            text        NOT NULL DEFAULT '',
    message_text    text        NOT NULL DEFAULT '',
    message_type    text        NOT NULL DEFAULT 'marketing',
    channel         text        NOT NULL DEFAULT 'retail',
    sender_id       text,
    status          text        NOT NULL DEFAULT 'draft',
    run_token       text,
    total           int         NOT NULL DEFAULT 0,
    accepted        int         NOT NULL DEFAULT 0,
    rejected        int         NOT NULL DEFAULT 0,
    delivered       int         NOT NULL DEFAULT 0,
    delivery_failed int         NOT NULL DEFAULT 0,
    processing      int         NOT NULL DEFAULT 0,
    ambiguous       int         NOT NULL DEFAULT 0,
    clicked         int         NOT NULL DEFAULT 0,
    unsubscribed    int         NOT NULL DEFAULT 0,
    credits_reserved int        NOT NULL DEFAULT 0,
    credits_debited  int        NOT NULL DEFAULT 0,
    credits_released int        NOT NULL DEFAULT 0,
    created_at      timestamptz,
    scheduled_at    timestamptz,
    started_at      timestamptz,
    finished_at     timestamptz,
    updated_at      timestamptz
);
CREATE INDEX campaigns_tenant ON campaigns (tenant_id, created_at DESC, id);

CREATE TABLE batches (
    batch_id    text PRIMARY KEY,
    campaign_id uuid NOT NULL,
    run_token   text NOT NULL,
    size        int  NOT NULL,
    claimed     int  NOT NULL DEFAULT 0,  -- recipients counted as processing while the batch is claimed
    status      text NOT NULL,           -- queued | processing | sent | failed | ambiguous | deferred
    recipients  jsonb                    -- [[id, phone], ...] while not yet sent
);
CREATE INDEX batches_campaign ON batches (campaign_id, status);

CREATE TABLE recipients (
    id          bigint PRIMARY KEY,
    campaign_id uuid        NOT NULL,
    phone       text        NOT NULL,
    batch_id    text        NOT NULL,
    status      text        NOT NULL,  -- accepted | rejected | ambiguous (delivery state is joined)
    message_id  text UNIQUE,
    bulk_id     text,
    parts       int         NOT NULL DEFAULT 1,
    error       text,
    retry_count int         NOT NULL DEFAULT 0,
    sent_at     timestamptz,
    failed_at   timestamptz
);
CREATE INDEX recipients_campaign ON recipients (campaign_id, id);

CREATE TABLE deliveries (
    message_id    text PRIMARY KEY,
    status        text        NOT NULL,  -- sent | delivered | failed | unknown
    raw_status    text        NOT NULL,
    error         text,
    provider_time timestamptz,
    reported_at   timestamptz NOT NULL
);

CREATE TABLE delivery_breakdown (
    campaign_id uuid NOT NULL,
    raw_status  text NOT NULL,
    count       int  NOT NULL,
    PRIMARY KEY (campaign_id, raw_status)
);
