// The campaign dashboard: list, detail with live progress, actions and create. No build step:
// plain ES modules served by the projector. Reads go to this origin; commands go to the enqueuer.
import { ApiError, apiKey, command, loadConfig, read } from "./api.js";
import { preview, segments } from "./sms.js";

const STATUSES = ["draft", "scheduled", "sending", "paused", "completed", "failed", "cancelled"];
// Which commands each status allows: the same table as the enqueuer's (services/enqueuer/enqueuer/domain.py).
const ALLOWED = {
  enqueue: ["draft", "scheduled", "paused"],
  schedule: ["draft", "scheduled"],
  pause: ["sending"],
  resume: ["paused"],
  cancel: ["draft", "scheduled", "paused", "sending"],
  retry: ["completed", "failed"],
};
let cfg = { enqueuerUrl: "", linkBase: "" };
let stopLive = () => {};

const $ = (sel, root = document) => root.querySelector(sel);
const main = () => $("#main");

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) el.append(c instanceof Node ? c : String(c));
  return el;
}

const fmt = (n) => (n ?? 0).toLocaleString();
const when = (iso) => (iso ? new Date(iso).toLocaleString() : "—");
const badge = (status) => h("span", { class: `badge ${status}`, text: status });

function notice(message, ok = false) {
  const el = $("#notice");
  el.textContent = message;
  el.classList.toggle("ok", ok);
  el.hidden = !message;
}

function explain(err) {
  if (err instanceof ApiError) {
    if (err.status === 401) return "Your API key was not accepted. Sign out and sign in with a valid key.";
    if (err.code === "INSUFFICIENT_CREDITS" && err.body)
      return `Not enough credits: this send needs ${fmt(err.body.needed)}, you have ${fmt(err.body.available)}.`;
    return err.message;
  }
  return "Something went wrong. Please try again.";
}

function progressBar(stats, big = false) {
  const pct = stats.total ? Math.round((1000 * stats.processed) / stats.total) / 10 : 0;
  return h("div", { class: `bar${big ? " big" : ""}`, role: "progressbar", "aria-valuemin": "0",
    "aria-valuemax": "100", "aria-valuenow": String(pct), "aria-label": `${pct}% processed` },
  h("span", { style: `width:${pct}%` }));
}

async function busy(button, work) {
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  const label = button.textContent;
  button.textContent = `${label}…`;
  try {
    return await work();
  } finally {
    button.textContent = label;
    button.removeAttribute("aria-busy");
    button.disabled = false;
  }
}

function confirmAction(title, text, okLabel) {
  const dialog = $("#confirm");
  $("#confirm-title").textContent = title;
  $("#confirm-text").textContent = text;
  $("#confirm-ok").textContent = okLabel;
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true }));
}

// --- sign in --------------------------------------------------------------------------------------

function signIn() {
  const input = h("input", { id: "key", type: "password", autocomplete: "off", required: true });
  const form = h("form", { class: "card", onsubmit: async (e) => {
    e.preventDefault();
    apiKey.set(input.value.trim());
    try {
      await read("/api/campaigns?pageSize=1");
      notice("");
      location.hash = "#/campaigns";
      route();
    } catch (err) {
      apiKey.clear();
      notice(explain(err));
    }
  } },
  h("h1", { text: "Sign in" }),
  h("p", { class: "muted", text: "Use your shop's API key. It stays in this browser tab only." }),
  h("label", { for: "key" }, "API key", input),
  h("div", { class: "row end" }, h("button", { type: "submit", text: "Sign in" })));
  main().replaceChildren(form);
  input.focus();
}

// --- list -----------------------------------------------------------------------------------------

async function listView(params) {
  const q = params.get("q") || "";
  const status = params.get("status") || "";
  const channel = params.get("channel") || "";
  const cursor = params.get("cursor") || "";
  const qs = new URLSearchParams({ pageSize: "20" });
  if (q) qs.set("q", q);
  if (status) qs.set("status", status);
  if (channel) qs.set("channel", channel);
  if (cursor) qs.set("cursor", cursor);
  const page = await read(`/api/campaigns?${qs}`);

  const search = h("input", { id: "q", type: "search", value: q, placeholder: "Name contains…" });
  const statusSel = h("select", { id: "status" }, h("option", { value: "", text: "Any status" }),
    STATUSES.map((s) => h("option", { value: s, selected: s === status, text: s })));
  const channelSel = h("select", { id: "channel" }, h("option", { value: "", text: "Both channels" }),
    ["retail", "shopify"].map((c) => h("option", { value: c, selected: c === channel, text: c })));
  const filters = h("form", { role: "search", class: "row", onsubmit: (e) => {
    e.preventDefault();
    const p = new URLSearchParams();
    if (search.value) p.set("q", search.value);
    if (statusSel.value) p.set("status", statusSel.value);
    if (channelSel.value) p.set("channel", channelSel.value);
    location.hash = `#/campaigns?${p}`;
  } },
  h("label", { for: "q" }, "Search", search), h("label", { for: "status" }, "Status", statusSel),
  h("label", { for: "channel" }, "Channel", channelSel), h("button", { type: "submit", text: "Apply" }));

  const rows = page.items.map((c) => h("tr", {},
    h("td", { "data-label": "Name" }, h("a", { href: `#/campaigns/${c.id}`, text: c.name || c.id })),
    h("td", { "data-label": "Status" }, badge(c.status)),
    h("td", { "data-label": "Channel", text: c.channel }),
    h("td", { class: "num", "data-label": "Sent", text: fmt(c.sent) }),
    h("td", { class: "num", "data-label": "Failed", text: fmt(c.failed) }),
    h("td", { class: "num", "data-label": "Total", text: fmt(c.total) }),
    h("td", { "data-label": "Progress" }, h("div", { class: "row" }, progressBar(c.stats), `${c.progress}%`)),
    h("td", { "data-label": "Created", text: when(c.createdAt) })));
  const table = page.items.length
    ? h("table", { class: "responsive" }, h("caption", { class: "visually-hidden", text: "Campaigns" }),
      h("thead", {}, h("tr", {}, ["Name", "Status", "Channel", "Sent", "Failed", "Total", "Progress", "Created"]
        .map((t, i) => h("th", { scope: "col", class: i >= 3 && i <= 5 ? "num" : null, text: t })))),
      h("tbody", {}, rows))
    : h("p", { class: "muted", text: "No campaigns match." });
  const pager = h("nav", { class: "pager", "aria-label": "Pages" },
    cursor ? h("button", { class: "secondary", type: "button", onclick: () => history.back(), text: "Previous" }) : null,
    page.nextCursor ? h("button", { type: "button", text: "Next", onclick: () => {
      const p = new URLSearchParams(params);
      p.set("cursor", page.nextCursor);
      location.hash = `#/campaigns?${p}`;
    } }) : null);
  main().replaceChildren(
    h("h1", { text: "Campaigns" }),
    h("section", { class: "card", "aria-label": "Filters" }, filters),
    h("section", { class: "card" }, h("p", { class: "muted" }, `${fmt(page.total)} campaigns`), table, pager));
}

// --- detail ---------------------------------------------------------------------------------------

function tiles(stats) {
  const items = [["Queued", stats.queued], ["Processing", stats.processing], ["Sent", stats.sent],
    ["Delivered", stats.delivered], ["Failed", stats.failed], ["Pending delivery", stats.pendingDelivery],
    ["Ambiguous", stats.ambiguous], ["Clicked", stats.clicked], ["Unsubscribed", stats.unsubscribed]];
  return h("div", { class: "tiles" }, items.map(([label, n]) =>
    h("div", { class: "tile", "data-stat": label.toLowerCase().replace(" ", "-") },
      h("div", { class: "n", text: fmt(n) }), h("div", { class: "l", text: label }))));
}

function renderStatus(body, slot) {
  const c = body.campaign;
  const s = body.stats;
  const breakdown = Object.entries(body.deliveryStatus || {});
  slot.replaceChildren(
    h("section", { class: "card", "aria-labelledby": "progress-h" },
      h("h2", { id: "progress-h", text: "Progress" }),
      progressBar(s, true),
      h("p", { "aria-live": "polite", id: "progress-text" },
        `${fmt(s.processed)} of ${fmt(s.total)} processed (${c.progress}%) · status `, badge(c.status)),
      tiles(s)),
    h("div", { class: "row", style: "align-items:stretch" },
      h("section", { class: "card", style: "flex:1", "aria-labelledby": "delivery-h" },
        h("h2", { id: "delivery-h", text: "Delivery status" }),
        breakdown.length
          ? h("table", {}, h("thead", {}, h("tr", {}, h("th", { scope: "col", text: "Mitto status" }),
            h("th", { scope: "col", class: "num", text: "Messages" }))),
          h("tbody", {}, breakdown.map(([k, v]) => h("tr", {}, h("td", { text: k }), h("td", { class: "num", text: fmt(v) })))))
          : h("p", { class: "muted", text: "No delivery reports yet." })),
      h("section", { class: "card", style: "flex:1", "aria-labelledby": "cost-h" },
        h("h2", { id: "cost-h", text: "Cost in credits" }),
        h("dl", { class: "timeline" }, h("dt", { text: "Reserved" }), h("dd", { text: fmt(c.cost?.reserved) }),
          h("dt", { text: "Debited" }), h("dd", { text: fmt(c.cost?.debited) }),
          h("dt", { text: "Released" }), h("dd", { text: fmt(c.cost?.released) }))),
      h("section", { class: "card", style: "flex:1", "aria-labelledby": "time-h" },
        h("h2", { id: "time-h", text: "Timeline" }),
        h("dl", { class: "timeline" }, h("dt", { text: "Created" }), h("dd", { text: when(c.createdAt) }),
          h("dt", { text: "Scheduled" }), h("dd", { text: when(c.scheduledAt) }),
          h("dt", { text: "Started" }), h("dd", { text: when(c.startedAt) }),
          h("dt", { text: "Finished" }), h("dd", { text: when(c.finishedAt) })))));
}

function actions(body, onDone) {
  const c = body.campaign;
  const s = body.stats;
  const id = c.id;
  const when_ = h("input", { id: "schedule-at", type: "datetime-local" });
  const act = (label, cmd, allowed, path, opts = {}) => {
    const button = h("button", { type: "button", class: opts.danger ? "danger" : opts.secondary ? "secondary" : null,
      disabled: !allowed, "data-action": cmd, text: label });
    button.addEventListener("click", async () => {
      if (opts.confirm && !(await confirmAction(opts.confirm[0], opts.confirm[1], label))) return;
      try {
        const result = await busy(button, () => command("POST", path, opts.body ? opts.body() : undefined));
        notice(opts.success ? opts.success(result) : `${label}: done.`, true);
        onDone();
      } catch (err) {
        notice(explain(err));
      }
    });
    return button;
  };
  const base = `/api/campaigns/${id}`;
  return h("section", { class: "card", "aria-label": "Actions" },
    h("div", { class: "row" },
      act("Send now", "enqueue", ALLOWED.enqueue.includes(c.status), `${base}/enqueue`, {
        confirm: ["Send this campaign now?", `It goes out to ${fmt(s.total || 0) || "every"} recipient(s) and uses credits.`],
        success: (r) => `Sending: ${fmt(r.queued)} recipients queued in ${fmt(r.enqueuedJobs)} batches.` }),
      h("label", { for: "schedule-at" }, "Send at", when_),
      act("Schedule", "schedule", ALLOWED.schedule.includes(c.status), `${base}/schedule`, {
        secondary: true, body: () => ({ scheduledAt: when_.value ? new Date(when_.value).toISOString() : null }),
        success: () => "Scheduled." }),
      act("Pause", "pause", ALLOWED.pause.includes(c.status), `${base}/pause`, { secondary: true }),
      act("Resume", "resume", ALLOWED.resume.includes(c.status), `${base}/resume`, { secondary: true }),
      act("Retry failed", "retry", ALLOWED.retry.includes(c.status) && s.failed > 0, `${base}/retry-failed`, {
        confirm: ["Retry the failed recipients?", `${fmt(s.failed)} failed recipient(s) get a new attempt.`] }),
      act("Cancel", "cancel", ALLOWED.cancel.includes(c.status), `${base}/cancel`, {
        danger: true, confirm: ["Cancel this campaign?", "Messages not yet sent will not be sent. This cannot be undone."] })));
}

async function live(id, onBody) {
  // Server-Sent Events over fetch, so the API key travels in a header (EventSource cannot send one).
  const controller = new AbortController();
  stopLive = () => controller.abort();
  (async () => {
    let delay = 1000;
    while (!controller.signal.aborted) {
      try {
        const r = await fetch(`/api/campaigns/${id}/progress`, { headers: { "X-Api-Key": apiKey.get() }, signal: controller.signal });
        if (!r.ok || !r.body) throw new Error(String(r.status));
        delay = 1000;
        const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value;
          let cut;
          while ((cut = buffer.indexOf("\n\n")) >= 0) {
            const frame = buffer.slice(0, cut);
            buffer = buffer.slice(cut + 2);
            const data = frame.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
            if (data) onBody(JSON.parse(data));
          }
        }
      } catch {
        if (controller.signal.aborted) return;
      }
      await new Promise((res) => setTimeout(res, delay));
      delay = Math.min(delay * 2, 15000);
    }
  })();
}

async function recipientsSection(id) {
  const status = h("select", { id: "r-status" }, h("option", { value: "", text: "Any" }),
    ["queued", "processing", "sent", "failed", "ambiguous"].map((s) => h("option", { value: s, text: s })));
  const dstatus = h("input", { id: "r-dstatus", placeholder: "e.g. Delivered", size: "12" });
  const body = h("tbody");
  const pager = h("nav", { class: "pager", "aria-label": "Recipient pages" });
  const cursors = [""];
  const load = async () => {
    const qs = new URLSearchParams({ limit: "50" });
    if (status.value) qs.set("status", status.value);
    if (dstatus.value) qs.set("deliveryStatus", dstatus.value);
    if (cursors.at(-1)) qs.set("cursor", cursors.at(-1));
    try {
      const page = await read(`/api/campaigns/${id}/recipients?${qs}`);
      body.replaceChildren(...page.items.map((r) => h("tr", {},
        h("td", { "data-label": "Phone", text: r.phone }), h("td", { "data-label": "Status" }, badge(r.status)),
        h("td", { "data-label": "Delivery", text: r.deliveryStatus || "—" }),
        h("td", { "data-label": "Message id", text: r.providerMessageId || "—" }),
        h("td", { "data-label": "Sent", text: when(r.sentAt) }),
        h("td", { "data-label": "Error", text: r.error || "" }))));
      if (!page.items.length) body.replaceChildren(h("tr", {}, h("td", { colspan: "6", class: "muted", text: "No recipients match." })));
      pager.replaceChildren(
        cursors.length > 1 ? h("button", { type: "button", class: "secondary", text: "Previous", onclick: () => { cursors.pop(); load(); } }) : "",
        page.nextCursor ? h("button", { type: "button", text: "Next", onclick: () => { cursors.push(page.nextCursor); load(); } }) : "");
    } catch (err) {
      notice(explain(err));
    }
  };
  const exportCsv = h("button", { type: "button", class: "secondary", text: "Export CSV" });
  exportCsv.addEventListener("click", () => busy(exportCsv, async () => {
    const qs = new URLSearchParams({ format: "csv" });
    if (status.value) qs.set("status", status.value);
    if (dstatus.value) qs.set("deliveryStatus", dstatus.value);
    const r = await fetch(`/api/campaigns/${id}/recipients?${qs}`, { headers: { "X-Api-Key": apiKey.get() } });
    if (!r.ok) { notice("The export failed; please try again."); return; }
    const url = URL.createObjectURL(await r.blob());
    const a = h("a", { href: url, download: `campaign-${id}-recipients.csv` });
    document.body.append(a); a.click(); a.remove(); URL.revokeObjectURL(url);
  }));
  const filters = h("form", { class: "row", onsubmit: (e) => { e.preventDefault(); cursors.length = 1; load(); } },
    h("label", { for: "r-status" }, "Status", status), h("label", { for: "r-dstatus" }, "Delivery status", dstatus),
    h("button", { type: "submit", text: "Filter" }), exportCsv);
  load();
  const section = h("section", { class: "card", "aria-labelledby": "recipients-h" }, h("h2", { id: "recipients-h", text: "Recipients" }),
    filters, h("table", { class: "responsive" }, h("thead", {}, h("tr", {},
      ["Phone", "Status", "Delivery", "Message id", "Sent", "Error"].map((t) => h("th", { scope: "col", text: t })))), body), pager);
  // Reloaded as the campaign moves on, at most every few seconds, and only on its first page. A change
  // inside the quiet interval is loaded when it ends: the last change of a run must reach the table.
  let last = 0;
  let pending = null;
  const reload = () => { pending = null; last = Date.now(); load(); };
  const refresh = () => {
    if (cursors.length > 1 || pending) return;
    const wait = 3000 - (Date.now() - last);
    if (wait <= 0) reload();
    else pending = setTimeout(reload, wait);
  };
  return { section, refresh };
}

async function readCampaign(id) {
  // The read side follows the event log: a campaign created a moment ago may take a moment to appear.
  for (let attempt = 0; ; attempt++) {
    try {
      return await read(`/api/campaigns/${id}/status`);
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 404) || attempt >= 40) throw err;
      main().replaceChildren(h("p", { class: "muted", "aria-live": "polite", text: "Loading the campaign…" }));
      await new Promise((res) => setTimeout(res, 250));
    }
  }
}

async function detailView(id) {
  const first = await readCampaign(id);
  const title = h("h1", {}, first.campaign.name || "Campaign", " ", badge(first.campaign.status));
  const actionSlot = h("div");
  const statusSlot = h("div");
  const refresh = async () => {
    try { paint(await read(`/api/campaigns/${id}/status`)); } catch (err) { notice(explain(err)); }
  };
  let lastStatus = "";
  let lastProgress = "";
  const recipients = await recipientsSection(id);
  const paint = (body) => {
    title.replaceChildren(body.campaign.name || "Campaign", " ", badge(body.campaign.status));
    renderStatus(body, statusSlot);
    const progress = `${body.campaign.status}:${body.stats.processed}:${body.stats.delivered}`;
    if (progress !== lastProgress) { lastProgress = progress; recipients.refresh(); }
    const key = `${body.campaign.status}:${body.stats.failed > 0}`;
    if (key !== lastStatus) { actionSlot.replaceChildren(actions(body, refresh)); lastStatus = key; }
  };
  main().replaceChildren(h("p", {}, h("a", { href: "#/campaigns", text: "← All campaigns" })), title,
    h("p", { class: "muted" }, `${first.campaign.channel} · ${first.campaign.messageType} · “${first.campaign.messageText}”`),
    actionSlot, statusSlot, recipients.section);
  paint(first);
  live(id, paint);
}

// --- create ---------------------------------------------------------------------------------------

async function newView() {
  const [lists, segs] = await Promise.all([
    command("GET", "/api/lists").catch(() => ({ items: [] })),
    command("GET", "/api/segments").catch(() => ({ items: [] })),
  ]);
  const name = h("input", { id: "c-name", required: true, maxlength: "200" });
  const text = h("textarea", { id: "c-text", required: true, maxlength: "2000", "aria-describedby": "c-counter" });
  const counter = h("p", { id: "c-counter", class: "counter", "aria-live": "polite" });
  const sender = h("input", { id: "c-sender", maxlength: "16", placeholder: "e.g. MyShop" });
  const type = h("select", { id: "c-type" }, h("option", { value: "marketing", text: "Marketing" }), h("option", { value: "service", text: "Service" }));
  const offer = h("input", { id: "c-offer", type: "url", placeholder: "https://…" });
  const audience = h("select", { id: "c-audience" }, h("option", { value: "all", text: "All contacts" }),
    (lists.items || []).map((l) => h("option", { value: `list:${l.id}`, text: `List: ${l.name}` })),
    (segs.items || []).map((s) => h("option", { value: `segment:${s.id}`, text: `Segment: ${s.name}` })));
  const schedule = h("input", { id: "c-when", type: "datetime-local" });
  const audienceOut = h("p", { class: "muted", "aria-live": "polite", id: "c-audience-out" });

  const count = () => {
    const full = preview(text.value, { marketing: type.value === "marketing", offerUrl: offer.value, linkBase: cfg.linkBase });
    const s = segments(full);
    counter.textContent = `${s.encoding} · ${s.parts} part${s.parts === 1 ? "" : "s"} · ${s.leftInPart} characters left in this part` +
      (type.value === "marketing" ? " (links included)" : "");
    counter.classList.toggle("over", s.parts > 1);
  };
  for (const el of [text, type, offer]) el.addEventListener("input", count);
  count();
  const audienceBody = () => {
    const v = audience.value;
    if (v === "all") return { all: true };
    const [kind, id] = v.split(":");
    return kind === "list" ? { listId: id } : { segmentId: id };
  };
  const previewBtn = h("button", { type: "button", class: "secondary", text: "Preview audience" });
  previewBtn.addEventListener("click", () => busy(previewBtn, async () => {
    try {
      const r = await command("POST", "/api/audience/preview", { audience: audienceBody(), text: text.value || " ",
        messageType: type.value, offerUrl: offer.value || null });
      audienceOut.textContent = `${fmt(r.count)} recipients · about ${fmt(r.cost?.credits ?? r.credits)} credits` +
        (r.cost?.available !== undefined ? ` (you have ${fmt(r.cost.available)})` : "");
    } catch (err) { notice(explain(err)); }
  }));
  const submit = h("button", { type: "submit", text: "Create campaign" });
  const form = h("form", { class: "card", onsubmit: (e) => {
    e.preventDefault();
    busy(submit, async () => {
      try {
        const body = { name: name.value, text: text.value, messageType: type.value, audience: audienceBody() };
        if (sender.value) body.senderId = sender.value;
        if (offer.value) body.offerUrl = offer.value;
        if (schedule.value) body.scheduledAt = new Date(schedule.value).toISOString();
        const created = await command("POST", "/api/campaigns", body);
        notice(schedule.value ? "Campaign created and scheduled." : "Campaign created as a draft.", true);
        location.hash = `#/campaigns/${created.id}`;
      } catch (err) { notice(explain(err)); }
    });
  } },
  h("label", { for: "c-name" }, "Name", name),
  h("label", { for: "c-text" }, "Message (placeholders: {{first_name}}, {{last_name}}, {{discount_code}})", text), counter,
  h("div", { class: "row" }, h("label", { for: "c-type" }, "Type", type), h("label", { for: "c-sender" }, "Sender id", sender),
    h("label", { for: "c-offer" }, "Offer link", offer)),
  h("div", { class: "row" }, h("label", { for: "c-audience" }, "Audience", audience), previewBtn), audienceOut,
  h("label", { for: "c-when" }, "Send at (optional; leave empty for a draft)", schedule),
  h("div", { class: "row end" }, submit));
  main().replaceChildren(h("h1", { text: "New campaign" }), form);
  name.focus();
}

// --- routing --------------------------------------------------------------------------------------

async function route() {
  stopLive();
  if (!apiKey.get()) { $("#who").replaceChildren(); return signIn(); }
  $("#who").replaceChildren(h("button", { type: "button", class: "secondary", text: "Sign out", onclick: () => {
    apiKey.clear(); location.hash = ""; route();
  } }));
  const [path, query] = (location.hash.slice(1) || "/campaigns").split("?");
  const params = new URLSearchParams(query || "");
  try {
    if (path === "/campaigns/new") await newView();
    else if (path.startsWith("/campaigns/")) await detailView(decodeURIComponent(path.split("/")[2]));
    else await listView(params);
    main().focus({ preventScroll: true });
  } catch (err) {
    notice(explain(err));
  }
}

window.addEventListener("hashchange", () => { notice(""); route(); });
loadConfig().then((c) => { cfg = c; route(); });
