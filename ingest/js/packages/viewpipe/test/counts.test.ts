import { expect, test } from "vitest";

import type { ContentKey, ViewpipeError } from "../src/index.js";
import { TYPE, client, freshKey, settledCount } from "./live.js";

test("counts answers many keys in one request, in the order asked, duplicates each time", async () => {
  const views = client();
  const keys: ContentKey[] = Array.from({ length: 20 }, (_, i) => freshKey(`many-${i}`));
  // Key i gets i % 3 views.
  for (const [i, key] of keys.entries()) {
    for (let v = 0; v < i % 3; v++) await views.view(key);
  }
  await settledCount(keys[keys.length - 1]!, 19 % 3);
  for (const [i, key] of keys.entries()) {
    if (i % 3 > 0) await settledCount(key, i % 3);
  }
  const asked = [...keys, keys[1]!, keys[0]!];
  const counts = await views.counts(asked);
  expect(counts).toEqual(asked.map((key) => ({ ...key, count: keys.indexOf(key) % 3 })));
});

test("counts of no keys asks nothing; over 100 keys is the API's too_many_keys", async () => {
  expect(await client().counts([])).toEqual([]);
  const many = Array.from({ length: 101 }, (_, i) => ({ contentType: TYPE, contentId: `k${i}` }));
  const error = await client()
    .counts(many)
    .then(
      () => null,
      (e: ViewpipeError) => e,
    );
  expect([error?.status, error?.code]).toEqual([400, "too_many_keys"]);
});

test("counts names the key at fault", async () => {
  const error = await client()
    .counts([freshKey("ok"), { contentType: "no-such-type", contentId: "x" }])
    .then(
      () => null,
      (e: ViewpipeError) => e,
    );
  expect(error?.status).toBe(400);
  expect(error?.code).toMatch(/namespace|content_type/);
});
