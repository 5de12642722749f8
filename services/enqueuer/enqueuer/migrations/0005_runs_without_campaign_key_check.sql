-- No foreign key from runs to campaigns. The consumer settles several outcomes of a run in one transaction
-- (a batch sent, the next claimed), and a run row updated twice by one transaction has its foreign key
-- checked again, with a key-share lock on the campaign: a pause or cancel holding the campaign's row lock
-- and waiting for the run then deadlocked with it (the command answered 409 CONFLICT mid-campaign). Runs
-- are only created by the enqueue transaction that holds the campaign's row lock, and campaigns are never
-- deleted (the same reasoning as recipients in 0003 and contacts in 0004).
ALTER TABLE runs DROP CONSTRAINT runs_campaign_id_fkey;
