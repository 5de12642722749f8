-- Runs the projector has read the CampaignEnqueued of, and the send outcomes that arrived before it.
-- sms.outcomes and campaign.events are separate topics: a poll can bring a batch's claim or result before
-- its run's enqueue, and counting it then showed a draft campaign with total 0 and recipients processing.
-- Such outcomes wait here, as read from the log, until their run is known; then they are applied in order.
-- (A run's CampaignEnqueued is published in the transaction that writes its batches: it is in the log.)
CREATE TABLE runs (
    run_token   text COLLATE "C" PRIMARY KEY,
    campaign_id uuid NOT NULL,
    kind        text NOT NULL  -- initial | resume | retry_failed; a run read before this table: unknown
);
INSERT INTO runs (run_token, campaign_id, kind)
SELECT run_token, id, coalesce(run_kind, 'unknown') FROM campaigns WHERE run_token IS NOT NULL
UNION
SELECT DISTINCT b.run_token, b.campaign_id, 'unknown' FROM batches b
WHERE NOT EXISTS (SELECT 1 FROM campaigns c WHERE c.run_token = b.run_token);

CREATE TABLE parked_outcomes (
    run_token  text COLLATE "C" NOT NULL,
    campaign_id uuid  NOT NULL,
    topic      text   NOT NULL,
    partition  int    NOT NULL,
    "offset"   bigint NOT NULL,
    raw        bytea  NOT NULL,
    occurred_at timestamptz NOT NULL,  -- the event's time (not the clock's: a replay parks the same rows)
    PRIMARY KEY (run_token, topic, partition, "offset")
);
