-- Reports waiting for their send result are marked `parked`, with a partial index over them only: a send
-- result looks its messages up in that small index instead of probing every report ever stored.
ALTER TABLE deliveries ADD COLUMN parked boolean NOT NULL DEFAULT false;
UPDATE deliveries d SET parked = true
WHERE NOT EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = d.message_id);
CREATE INDEX deliveries_parked ON deliveries (message_id) WHERE parked;
