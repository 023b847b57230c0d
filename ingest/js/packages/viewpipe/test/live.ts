/**
 * What the tests share: the live ingest they talk to (`VIEWPIPE_URL`, default
 * http://127.0.0.1:8080; `VIEWPIPE_WRITE_KEY` and `VIEWPIPE_READ_KEY` when it
 * wants keys), fresh content ids, and waiting for the aggregator to have
 * consumed views.
 */
import { createClient } from "../src/index.js";
import type { Client, ClientOptions, ContentKey } from "../src/index.js";

export const API_URL = process.env.VIEWPIPE_URL ?? "http://127.0.0.1:8080";
/** A namespace in both the default `NAMESPACES` and the e2e tests' `page,resource`. */
export const TYPE = "resource";

export function client(options: Partial<ClientOptions> = {}): Client {
  return createClient({
    url: API_URL,
    key: process.env.VIEWPIPE_WRITE_KEY,
    readKey: process.env.VIEWPIPE_READ_KEY,
    ...options,
  });
}

const run = Math.random().toString(36).slice(2, 10);
let n = 0;

/** A key no other test (or earlier run) has counted. */
export function freshKey(what: string): ContentKey {
  n += 1;
  return { contentType: TYPE, contentId: `js-${run}-${what}-${n}` };
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * The key's count once the aggregator consumed at least `atLeast` of its views,
 * read again after a pause so a late extra view would show.
 */
export async function settledCount(key: ContentKey, atLeast: number, within = 30_000): Promise<number> {
  const reader = client();
  const deadline = Date.now() + within;
  let count = await reader.count(key);
  while (count < atLeast) {
    if (Date.now() > deadline) {
      throw new Error(`${key.contentId}: count ${count} after ${within} ms, expected at least ${atLeast}`);
    }
    await sleep(100);
    count = await reader.count(key);
  }
  await sleep(700);
  return reader.count(key);
}
