-- Credits, contacts, lists and segments, campaign audiences and schedules, and what a run needs to be
-- priced, settled and republished exactly as it was planned.

-- A tenant's credits: available to reserve, held by runs, spent on accepted message parts.
ALTER TABLE tenants
    ADD COLUMN credits_available bigint NOT NULL DEFAULT 0 CHECK (credits_available >= 0),
    ADD COLUMN credits_reserved  bigint NOT NULL DEFAULT 0 CHECK (credits_reserved >= 0),
    ADD COLUMN credits_spent     bigint NOT NULL DEFAULT 0 CHECK (credits_spent >= 0);

CREATE TABLE credit_ledger (
    id        bigserial PRIMARY KEY,
    tenant_id uuid        NOT NULL REFERENCES tenants (id),
    kind      text        NOT NULL CHECK (kind IN ('top_up', 'reserve', 'debit', 'release')),
    credits   bigint      NOT NULL CHECK (credits > 0),
    run_token text,
    reference text,
    at        timestamptz NOT NULL
);
CREATE INDEX credit_ledger_tenant ON credit_ledger (tenant_id, id DESC);

-- One row per (tenant, E.164 phone). opted_out_at is sticky: an import never clears it.
CREATE TABLE contacts (
    id           bigserial PRIMARY KEY,
    tenant_id    uuid        NOT NULL REFERENCES tenants (id),
    phone        text        NOT NULL,
    first_name   text,
    last_name    text,
    email        text,
    attributes   jsonb       NOT NULL DEFAULT '{}',
    tags         text[]      NOT NULL DEFAULT '{}',
    consent      text        NOT NULL DEFAULT 'granted' CHECK (consent IN ('granted', 'unknown', 'denied')),
    opted_out_at timestamptz,
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL,
    UNIQUE (tenant_id, phone)
);

CREATE TABLE lists (
    id         uuid PRIMARY KEY,
    tenant_id  uuid        NOT NULL REFERENCES tenants (id),
    name       text        NOT NULL,
    created_at timestamptz NOT NULL,
    UNIQUE (tenant_id, name)
);

CREATE TABLE list_members (
    list_id    uuid        NOT NULL REFERENCES lists (id) ON DELETE CASCADE,
    contact_id bigint      NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
    added_at   timestamptz NOT NULL,
    PRIMARY KEY (list_id, contact_id)
);

CREATE TABLE segments (
    id         uuid PRIMARY KEY,
    tenant_id  uuid        NOT NULL REFERENCES tenants (id),
    name       text        NOT NULL,
    filter     jsonb       NOT NULL,
    created_at timestamptz NOT NULL,
    UNIQUE (tenant_id, name)
);

-- audience NULL: the inline recipients of campaign_audience. Otherwise {"kind": "all"|"list"|"segment"|"filter", ...}.
ALTER TABLE campaigns
    ADD COLUMN offer_url           text,
    ADD COLUMN audience            jsonb,
    ADD COLUMN resume_requested_at timestamptz,
    ADD COLUMN schedule_refused_at timestamptz,
    ADD COLUMN last_error          jsonb;
CREATE INDEX campaigns_due ON campaigns (scheduled_at) WHERE status = 'scheduled';
CREATE INDEX campaigns_resuming ON campaigns (resume_requested_at) WHERE resume_requested_at IS NOT NULL;

-- A run keeps the text it was planned with, so that a republished batch is the batch that was planned.
ALTER TABLE runs
    ADD COLUMN tenant_id              uuid,
    ADD COLUMN template               text,
    ADD COLUMN sender_id              text,
    ADD COLUMN message_type           text,
    ADD COLUMN offer_url              text,
    ADD COLUMN credits_reserved       bigint  NOT NULL DEFAULT 0,
    ADD COLUMN credits_debited        bigint  NOT NULL DEFAULT 0,
    ADD COLUMN credits_released       bigint  NOT NULL DEFAULT 0,
    ADD COLUMN reservation_open       boolean NOT NULL DEFAULT false,
    ADD COLUMN reservation_expires_at timestamptz,
    ADD COLUMN republished            int     NOT NULL DEFAULT 0;
CREATE INDEX runs_unsettled ON runs (last_progress) WHERE settled < batch_count;
CREATE INDEX runs_reservations ON runs (reservation_expires_at) WHERE reservation_open;

ALTER TABLE run_batches
    ADD COLUMN cost          int      NOT NULL DEFAULT 0,
    ADD COLUMN debited       int      NOT NULL DEFAULT 0,
    ADD COLUMN ambiguous     int      NOT NULL DEFAULT 0,
    ADD COLUMN recipient_ids bigint[] NOT NULL DEFAULT '{}';
