"""Response models of the read API: they write the OpenAPI document (`/openapi.json`, `/docs`) and check
every answer against it. Field names are the seed frontend's (camelCase)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class Stats(BaseModel):
    """One meaning per count. sent = accepted and not reported failed; failed = rejected at send or
    reported failed; processed = sent + failed; pendingDelivery = sent - delivered."""

    total: int
    queued: int
    processing: int
    ambiguous: int = Field(description="in batches Mitto may have accepted; never re-sent automatically")
    accepted: int = Field(description="Mitto returned a message id")
    sent: int
    delivered: int
    failed: int
    rejected: int
    deliveryFailed: int
    pendingDelivery: int
    processed: int
    clicked: int = Field(description="recipients who clicked the offer link at least once")
    clicks: int
    unsubscribed: int


class Cost(BaseModel):
    reserved: int
    debited: int
    released: int


class EnqueueError(BaseModel):
    code: str
    message: str | None
    at: str | None


class Campaign(BaseModel):
    id: str
    tenantId: str
    name: str
    messageText: str
    messageType: str
    channel: str
    senderId: str | None
    offerUrl: str | None
    status: str
    runToken: str | None
    runKind: str | None
    total: int
    sent: int
    failed: int
    processed: int
    delivered: int
    progress: float = Field(description="processed / total, in percent")
    cost: Cost = Field(description="credits of the campaign's runs")
    createdAt: str | None
    scheduledAt: str | None
    startedAt: str | None
    finishedAt: str | None
    updatedAt: str | None
    lastEnqueueError: EnqueueError | None
    stats: Stats


class Metrics(BaseModel):
    """The seed frontend's progress card."""

    total: int
    queued: int
    processing: int
    accepted: int
    delivered: int
    deliveryFailed: int
    pendingDelivery: int
    processed: int


class RecipientBreakdown(BaseModel):
    queued: int
    processing: int
    sent: int
    failed: int
    ambiguous: int


class CampaignStatus(BaseModel):
    campaign: Campaign
    stats: Stats
    progress: float
    recipients: RecipientBreakdown
    deliveryStatus: dict[str, int] = Field(description="messages by Mitto's raw delivery status")
    metrics: Metrics


class Totals(BaseModel):
    campaigns: int
    total: int
    accepted: int
    sent: int
    delivered: int
    failed: int
    deliveryFailed: int
    pendingDelivery: int
    processed: int
    processing: int
    ambiguous: int
    clicked: int
    clicks: int
    unsubscribed: int
    creditsDebited: int
    byStatus: dict[str, int] | None = None


class CampaignPage(BaseModel):
    items: list[Campaign]
    total: int = Field(description="campaigns matching the filters")
    pageSize: int
    page: int | None = Field(description="set when the page was asked for by number")
    nextCursor: str | None
    totals: Totals


class TenantChannelTotals(Totals):
    tenantId: str
    tenantName: str | None
    channel: str


class TotalsPage(BaseModel):
    items: list[TenantChannelTotals]
    channels: dict[str, Totals]


class Recipient(BaseModel):
    id: int
    phone: str
    status: Literal["queued", "processing", "sent", "failed", "ambiguous"]
    batchId: str
    providerMessageId: str | None
    bulkId: str | None
    deliveryStatus: str | None = Field(description="Mitto's raw delivery status")
    sentAt: str | None
    deliveredAt: str | None
    failedAt: str | None
    error: str | None
    retryCount: int
    parts: int


class RecipientPage(BaseModel):
    items: list[Recipient]
    nextCursor: str | None


class RefreshCandidate(BaseModel):
    messageId: str
    campaignId: str
    tenantId: str
    sentAt: str


class RefreshCandidates(BaseModel):
    items: list[RefreshCandidate]


class ReconciliationSection(BaseModel):
    count: int = Field(description="batches, messages or runs, as the section says")
    recipients: int
    items: list[dict[str, object]]
    command: str
    why: str


class Reconciliation(BaseModel):
    generatedAt: str
    stuckProcessing: ReconciliationSection
    sentWithoutFinalStatus: ReconciliationSection
    ambiguousBatches: ReconciliationSection
    stuckRuns: ReconciliationSection
    outcomesWaitingForRun: ReconciliationSection


class TableChecksum(BaseModel):
    rows: int
    checksum: str


class Checksum(BaseModel):
    schema_: str = Field(alias="schema")
    digest: str
    tables: dict[str, TableChecksum]
    positions: dict[str, int]


class ApiErrorBody(BaseModel):
    code: str
    message: str
    requestId: str | None
