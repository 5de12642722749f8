-- Every recipient's `state` is updated once after its send result (queued → sent | failed | ambiguous).
-- COPY fills pages completely, so each of those updates wrote a new row version on another page and an
-- entry in both indexes. Half-empty pages let the new version stay on its page (a HOT update: `state` is
-- in no index): measured on 200,000 rows, 15.6 → 5.4 µs per updated row, for COPY 4.5 → 5.8 µs per row.
-- Applies to pages written from now on.
ALTER TABLE recipients SET (fillfactor = 50);
