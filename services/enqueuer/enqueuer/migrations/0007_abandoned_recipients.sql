-- A recipient an operator failed out of an ambiguous batch is `abandoned`: it may have been delivered, so
-- the sender never hands its phone over again. "Retry failed" takes `failed` recipients only; before this
-- state, an abandoned recipient was requeued, suppressed by the sender as already handed over, and left
-- `queued` in a completed campaign.
ALTER TABLE recipients DROP CONSTRAINT recipients_state_check;
ALTER TABLE recipients ADD CONSTRAINT recipients_state_check
    CHECK (state IN ('queued', 'sent', 'failed', 'ambiguous', 'abandoned'));
