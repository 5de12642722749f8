-- The enqueuer's write model: tenants, campaigns, recipients materialised per campaign, runs and batches.

CREATE TABLE tenants (
    id                  uuid PRIMARY KEY,
    name                text        NOT NULL,
    channel             text        NOT NULL CHECK (channel IN ('retail', 'shopify')),
    default_region      text        NOT NULL,
    sender_id           text,
    subscription_status text        NOT NULL DEFAULT 'active' CHECK (subscription_status IN ('active', 'inactive')),
    created_at          timestamptz NOT NULL
);

CREATE TABLE api_keys (
    id         text PRIMARY KEY,
    tenant_id  uuid        NOT NULL REFERENCES tenants (id),
    key_hash   text        NOT NULL UNIQUE,
    created_at timestamptz NOT NULL,
    revoked_at timestamptz
);

CREATE TABLE campaigns (
    id           uuid PRIMARY KEY,
    tenant_id    uuid        NOT NULL REFERENCES tenants (id),
    name         text        NOT NULL,
    text         text        NOT NULL,
    sender_id    text,
    message_type text        NOT NULL CHECK (message_type IN ('marketing', 'service')),
    status       text        NOT NULL CHECK (status IN
                     ('draft', 'scheduled', 'sending', 'paused', 'completed', 'failed', 'cancelled')),
    run_token    text,
    scheduled_at timestamptz,
    started_at   timestamptz,
    finished_at  timestamptz,
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL
);
CREATE INDEX campaigns_tenant ON campaigns (tenant_id, created_at DESC);

-- Recipients given inline when the campaign was created (already normalised to E.164).
CREATE TABLE campaign_audience (
    campaign_id uuid  NOT NULL REFERENCES campaigns (id),
    phone       text  NOT NULL,
    "values"    jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (campaign_id, phone)
);

-- Materialised once per (campaign, phone). state is what the enqueuer knows from sms.outcomes.
CREATE TABLE recipients (
    id          bigserial PRIMARY KEY,
    campaign_id uuid  NOT NULL REFERENCES campaigns (id),
    phone       text  NOT NULL,
    "values"    jsonb NOT NULL DEFAULT '{}',
    state       text  NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'sent', 'failed', 'ambiguous')),
    UNIQUE (campaign_id, phone)
);
CREATE INDEX recipients_campaign_state ON recipients (campaign_id, state, id);

CREATE TABLE runs (
    run_token     text PRIMARY KEY,
    campaign_id   uuid        NOT NULL REFERENCES campaigns (id),
    kind          text        NOT NULL CHECK (kind IN ('initial', 'resume', 'retry_failed')),
    total         int         NOT NULL,
    batch_count   int         NOT NULL,
    batch_size    int         NOT NULL,
    settled       int         NOT NULL DEFAULT 0,
    accepted      int         NOT NULL DEFAULT 0,
    failed        int         NOT NULL DEFAULT 0,
    ambiguous     int         NOT NULL DEFAULT 0,
    deferred      int         NOT NULL DEFAULT 0,
    status        text        NOT NULL DEFAULT 'sending'
                      CHECK (status IN ('sending', 'completed', 'failed', 'paused', 'cancelled')),
    started_at    timestamptz NOT NULL,
    finished_at   timestamptz,
    last_progress timestamptz NOT NULL
);
CREATE INDEX runs_campaign ON runs (campaign_id, started_at);

CREATE TABLE run_batches (
    batch_id  text PRIMARY KEY,
    run_token text NOT NULL REFERENCES runs (run_token),
    batch_no  int  NOT NULL,
    size      int  NOT NULL,
    status    text NOT NULL DEFAULT 'queued'
                  CHECK (status IN ('queued', 'claimed', 'sent', 'failed', 'ambiguous', 'deferred')),
    accepted  int  NOT NULL DEFAULT 0,
    failed    int  NOT NULL DEFAULT 0,
    settled_at timestamptz
);
CREATE INDEX run_batches_run ON run_batches (run_token, status);

CREATE TABLE idempotency_keys (
    tenant_id    uuid        NOT NULL,
    key          text        NOT NULL,
    request_hash text        NOT NULL,
    status_code  int         NOT NULL,
    response     jsonb       NOT NULL,
    created_at   timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, key)
);
