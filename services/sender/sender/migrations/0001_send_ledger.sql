-- The send ledger: a batch is claimed before the provider call and its outcome recorded after it.

-- What the sender knows of each campaign from campaign.events (to defer batches of paused/cancelled runs).
CREATE TABLE campaign_control (
    campaign_id uuid PRIMARY KEY,
    run_token   text,
    status      text NOT NULL
);

CREATE TABLE send_batches (
    batch_id     text PRIMARY KEY,
    campaign_id  uuid        NOT NULL,
    run_token    text        NOT NULL,
    status       text        NOT NULL CHECK (status IN ('claimed', 'sent', 'failed', 'ambiguous', 'deferred')),
    size         int         NOT NULL,
    bulk_id      text,
    retry_count  int         NOT NULL DEFAULT 0,
    error        text,
    outcome      bytea,      -- the encoded outcome event, re-emitted as is when the batch arrives again
    claimed_at   timestamptz NOT NULL,
    finished_at  timestamptz
);
CREATE INDEX send_batches_open ON send_batches (status) WHERE status IN ('claimed', 'ambiguous');

-- At most one hand-over per (campaign, phone): the guard behind "no double send".
-- A phone whose hand-over was refused by the provider (rejected) may be claimed again by a later run.
CREATE TABLE sent_recipients (
    campaign_id  uuid   NOT NULL,
    phone        text   NOT NULL,
    recipient_id bigint NOT NULL,
    batch_id     text   NOT NULL,
    status       text   NOT NULL CHECK (status IN ('claimed', 'accepted', 'rejected', 'ambiguous')),
    message_id   text,
    PRIMARY KEY (campaign_id, phone)
);
CREATE INDEX sent_recipients_batch ON sent_recipients (batch_id);
