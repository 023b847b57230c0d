/** Vitest's global setup: fail at once, saying what to do, when no ingest answers. */
export default async function reachable(): Promise<void> {
  const url = process.env.VIEWPIPE_URL ?? "http://127.0.0.1:8080";
  try {
    const r = await fetch(new URL("healthz", url.endsWith("/") ? url : `${url}/`));
    if (!r.ok) throw new Error(`GET /healthz answered ${r.status}`);
  } catch (e) {
    throw new Error(
      `viewpipe's tests need a live ingest and aggregator at VIEWPIPE_URL (${url}): ` +
        `start them with deploy/local/run, or run the Rust e2e test that starts its own ` +
        `(cargo test -p viewpipe-tests --test e2e -- js::). ${e instanceof Error ? e.message : e}`,
    );
  }
}
