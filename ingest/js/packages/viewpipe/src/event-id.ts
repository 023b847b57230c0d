/**
 * A new random `eventId` (at most 128 printable ASCII characters, as the API
 * requires): a UUID where `crypto.randomUUID` exists (browsers in a secure
 * context, Node 19+), else 128 random bits from `crypto.getRandomValues`, else
 * (very old runtimes) the time and `Math.random`, unique enough for de-duplicating
 * retries of one view.
 */
export function newEventId(): string {
  const crypto = (globalThis as { crypto?: Crypto }).crypto;
  if (crypto && typeof crypto.randomUUID === "function") return crypto.randomUUID();
  if (crypto && typeof crypto.getRandomValues === "function") {
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }
  const random = () => Math.floor(Math.random() * 0x100000000).toString(16).padStart(8, "0");
  return `${Date.now().toString(16)}-${random()}${random()}${random()}`;
}
