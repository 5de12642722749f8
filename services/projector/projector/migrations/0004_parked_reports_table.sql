-- Reports waiting for their send result move from a flag on `deliveries` to a table of their own. When the
-- projector runs behind the log, most reports arrive before their send result, and un-parking one by
-- clearing the flag rewrote its whole `deliveries` row and its primary-key entry (the flag is in an index
-- predicate, so the update can never stay on its page): 39 instead of 20 µs of PostgreSQL per send result.
-- Deleting a narrow row marks it dead in place; the report itself is written once and never again.
CREATE TABLE parked_reports (
    message_id text COLLATE "C" PRIMARY KEY
);
INSERT INTO parked_reports (message_id) SELECT message_id FROM deliveries WHERE parked;
DROP INDEX deliveries_parked;
ALTER TABLE deliveries DROP COLUMN parked;
