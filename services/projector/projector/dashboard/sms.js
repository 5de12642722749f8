// SMS part counting, the same rules as shared/sms.py (GSM-7 160/153 with double-width extension
// characters, UCS-2 70/67 counted in UTF-16 units). A browser test checks both agree.

const GSM7_BASIC = new Set(
  "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?" +
  "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà");
const GSM7_EXTENSION = new Set("^{}\\[~]|€\f");
const PLACEHOLDER = /\{\{\s*([A-Za-z_]+)\s*\}\}/g;

export function segments(text) {
  const chars = Array.from(text);
  const gsm = chars.every((c) => GSM7_BASIC.has(c) || GSM7_EXTENSION.has(c));
  const units = gsm ? chars.reduce((n, c) => n + (GSM7_EXTENSION.has(c) ? 2 : 1), 0) : text.length;
  const [single, multi] = gsm ? [160, 153] : [70, 67];
  const parts = units <= single ? 1 : Math.ceil(units / multi);
  const perPart = units <= single ? single : multi;
  return { encoding: gsm ? "GSM-7" : "UCS-2", parts, units, perPart, leftInPart: parts * perPart - units };
}

// The longest text a recipient could get: placeholders filled with a sample value, and the links the
// sender appends to marketing messages (tokens have a fixed length of 28 characters).
export function preview(template, { marketing, offerUrl, linkBase, sample = { first_name: "Alexandra" } }) {
  const filled = template.replace(PLACEHOLDER, (_, name) => {
    const key = name.toLowerCase().replace("firstname", "first_name").replace("lastname", "last_name");
    return sample[key] ?? "";
  });
  const text = filled.split("\n").map((l) => l.replace(/[ \t]+/g, " ").trim()).join("\n").trim();
  if (!marketing) return text;
  const token = "x".repeat(28);
  const base = (linkBase || "https://go.example").replace(/\/$/, "");
  const lines = [text];
  if (offerUrl) lines.push(`Claim Offer: ${base}/l/${token}`);
  lines.push(`To unsubscribe, tap: ${base}/u/${token}`);
  return lines.join("\n");
}
