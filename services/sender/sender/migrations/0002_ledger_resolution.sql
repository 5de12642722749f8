-- Ledger v2: cheaper per-recipient writes, and what resolving an ambiguous batch needs.
--
-- A recipient row is written once, when its phone is claimed (status 'claimed'), and then only if its
-- outcome is not the batch's: accepted recipients of a sent batch keep 'claimed' (their message ids are in
-- the batch's recorded BatchSent), while refused ones become 'rejected' (a later run may claim them again).
-- Recipients of an ambiguous batch keep 'claimed' until a resolution gives each its final status:
-- 'accepted' (with its message id), 'rejected', or 'abandoned' (an operator failed it although it may
-- have been delivered: it is never claimed again). `recipient_outcomes` shows the effective status.

-- Rows of a batch are found from the batch's own recipients (by primary key), never by batch id.
DROP INDEX sent_recipients_batch;

ALTER TABLE sent_recipients DROP CONSTRAINT sent_recipients_status_check;
ALTER TABLE sent_recipients ADD CONSTRAINT sent_recipients_status_check
    CHECK (status IN ('claimed', 'accepted', 'rejected', 'ambiguous', 'abandoned'));

ALTER TABLE send_batches DROP CONSTRAINT send_batches_status_check;
ALTER TABLE send_batches ADD CONSTRAINT send_batches_status_check
    CHECK (status IN ('claimed', 'sent', 'failed', 'ambiguous', 'deferred', 'resolved'));

ALTER TABLE send_batches
    ADD COLUMN tenant_id   text,
    -- While ambiguous: the BatchQueued record (lz4), to list its recipients and to resend it.
    ADD COLUMN batch_event bytea,
    ADD COLUMN remaining   int,                  -- recipients still ambiguous
    ADD COLUMN resolutions int NOT NULL DEFAULT 0, -- BatchResolved events emitted (numbers their ids)
    ADD COLUMN resolved_at timestamptz;

-- The outcome is 0.1-0.6 MB of JSON written once and read only on redelivery: storing it uncompressed
-- saves the CPU that compressing every batch would cost.
ALTER TABLE send_batches ALTER COLUMN outcome SET STORAGE EXTERNAL;

-- Message ids an ambiguous answer carried without usable positions: looked up one by one.
CREATE TABLE ambiguous_message_ids (
    batch_id     text NOT NULL REFERENCES send_batches (batch_id),
    message_id   text NOT NULL,
    looked_up_at timestamptz,
    PRIMARY KEY (batch_id, message_id)
);

CREATE VIEW recipient_outcomes AS
SELECT r.campaign_id, r.phone, r.recipient_id, r.batch_id,
       CASE WHEN r.status <> 'claimed' THEN r.status
            WHEN b.status = 'sent' THEN 'accepted'
            WHEN b.status = 'ambiguous' THEN 'ambiguous'
            ELSE 'claimed' END AS status,
       r.message_id
FROM sent_recipients r JOIN send_batches b USING (batch_id);
