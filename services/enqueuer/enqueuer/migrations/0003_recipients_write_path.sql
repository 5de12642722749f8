-- Materialising a million recipients is bound by per-row work inside PostgreSQL (measured on 200k rows:
-- the foreign key's trigger cost as much as the unique index). So:
-- * no foreign key from recipients to campaigns: recipients are only created by the enqueue transaction
--   that holds the campaign's row lock, and campaigns are never deleted;
-- * no (campaign, state, id) index: runs stream a campaign's recipients in phone order through the
--   (campaign, phone) unique index that "once per (campaign, phone)" needs anyway;
-- * phones compare byte-wise (E.164 has no language): a cheaper unique index.
ALTER TABLE recipients DROP CONSTRAINT recipients_campaign_id_fkey;
DROP INDEX recipients_campaign_state;
ALTER TABLE recipients ALTER COLUMN phone TYPE text COLLATE "C";

-- Planned batches are large JSON documents written once and read once by the relay: compressing them in
-- TOAST costs more than it saves (the producer compresses them for the broker anyway).
ALTER TABLE outbox ALTER COLUMN value SET STORAGE EXTERNAL;
ALTER TABLE run_batches ALTER COLUMN recipient_ids SET STORAGE EXTERNAL;
