-- Read models, second cut: engagement, credits, per-batch counters for reconciliation and status refresh,
-- batch members as arrays, a cheaper recipient key, byte-order collation on provider message ids, and the
-- ledger of applied once-only events. Every change is in place (ALTER), so live rows and the stored
-- consumer positions stay consistent with each other.

-- Provider message ids are opaque ASCII: compare them byte by byte, not by locale rules (cheaper index probes).
ALTER TABLE deliveries ALTER COLUMN message_id TYPE text COLLATE "C";
ALTER TABLE recipients ALTER COLUMN message_id TYPE text COLLATE "C";

-- Recipient ids are unique across campaigns, but every read is per campaign: one index instead of two.
ALTER TABLE recipients DROP CONSTRAINT recipients_pkey;
DROP INDEX recipients_campaign;
ALTER TABLE recipients ADD PRIMARY KEY (campaign_id, id);

ALTER TABLE tenants
    ADD COLUMN sender_id           text,
    ADD COLUMN subscription_status text NOT NULL DEFAULT 'active',
    ADD COLUMN credits_topped_up   bigint NOT NULL DEFAULT 0;

ALTER TABLE campaigns
    ADD COLUMN offer_url                  text,
    ADD COLUMN run_kind                   text,
    ADD COLUMN run_total                  int NOT NULL DEFAULT 0,
    ADD COLUMN batch_count                int NOT NULL DEFAULT 0,
    ADD COLUMN clicks                     int NOT NULL DEFAULT 0,
    ADD COLUMN last_enqueue_error_code    text,
    ADD COLUMN last_enqueue_error_message text,
    ADD COLUMN last_enqueue_error_at      timestamptz;
CREATE INDEX campaigns_status ON campaigns (status, updated_at);

-- Members of a batch while it is queued, processing or deferred (ids and phones in the same order).
ALTER TABLE batches DROP COLUMN recipients;
ALTER TABLE batches
    ADD COLUMN batch_no        int,
    ADD COLUMN member_ids      bigint[],
    ADD COLUMN member_phones   text[],
    ADD COLUMN min_id          bigint,
    ADD COLUMN max_id          bigint,
    ADD COLUMN bulk_id         text,
    ADD COLUMN error           text,
    ADD COLUMN retry_count     int NOT NULL DEFAULT 0,
    ADD COLUMN accepted        int NOT NULL DEFAULT 0,
    ADD COLUMN rejected        int NOT NULL DEFAULT 0,
    ADD COLUMN ambiguous       int NOT NULL DEFAULT 0,
    ADD COLUMN delivered       int NOT NULL DEFAULT 0,
    ADD COLUMN delivery_failed int NOT NULL DEFAULT 0,
    ADD COLUMN claimed_at      timestamptz,
    ADD COLUMN finished_at     timestamptz;
CREATE INDEX batches_bulk ON batches (bulk_id) WHERE bulk_id IS NOT NULL;
CREATE INDEX batches_unsettled ON batches (status, claimed_at) WHERE status IN ('processing', 'ambiguous');
-- Accepted messages still waiting for a final delivery report, oldest first (status refresh).
CREATE INDEX batches_pending_delivery ON batches (finished_at)
    WHERE accepted > delivered + delivery_failed;

-- Clicks and unsubscribes per recipient: the first one moves `clicked` / `unsubscribed`, every click `clicks`.
CREATE TABLE engagements (
    campaign_id  uuid        NOT NULL,
    recipient_id bigint      NOT NULL,
    kind         text        NOT NULL,  -- click | unsubscribe
    count        int         NOT NULL,
    first_at     timestamptz NOT NULL,
    last_at      timestamptz NOT NULL,
    PRIMARY KEY (campaign_id, recipient_id, kind)
);

-- Events whose effect is not idempotent by itself (increments, last-writer fields) are applied once:
-- an outbox relay may publish the same event again after later ones.
CREATE TABLE applied_events (
    event_id text COLLATE "C" PRIMARY KEY
);
