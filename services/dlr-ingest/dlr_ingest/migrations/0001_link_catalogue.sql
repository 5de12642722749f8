-- What the link pages need, fed from the log (tenant.events, campaign.events, sms.batches): a token names a
-- recipient id; the redirect needs its campaign's offer URL, the unsubscribe page its phone and shop.
-- The delivery-report webhook never reads these tables.

CREATE TABLE tenants (
    id    text PRIMARY KEY,
    name  text NOT NULL
);

CREATE TABLE campaigns (
    id         text PRIMARY KEY,
    tenant_id  text,
    name       text,
    offer_url  text
);

CREATE TABLE recipients (
    id           bigint PRIMARY KEY,
    campaign_id  text NOT NULL,
    tenant_id    text,
    phone        text NOT NULL
);

-- One row per recipient who unsubscribed through a link: a second visit publishes nothing.
CREATE TABLE unsubscribes (
    recipient_id     bigint PRIMARY KEY,
    unsubscribed_at  timestamptz NOT NULL
);
