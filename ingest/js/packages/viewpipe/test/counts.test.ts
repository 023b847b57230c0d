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

test("100 keys: one counts request beside 100 single reads", async () => {
  const reader = client();
  const keys = Array.from({ length: 100 }, (_, i) => freshKey(`latency-${i}`));
  await reader.view(keys[0]!);
  await settledCount(keys[0]!, 1);
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  const time = async (f: () => Promise<unknown>) => {
    const started = performance.now();
    await f();
    return performance.now() - started;
  };
  const many: number[] = [];
  const sequential: number[] = [];
  const parallel: number[] = [];
  for (let round = 0; round < 5; round++) {
    many.push(await time(() => reader.counts(keys)));
    sequential.push(
      await time(async () => {
        for (const key of keys) await reader.count(key);
      }),
    );
    parallel.push(await time(() => Promise.all(keys.map((key) => reader.count(key)))));
  }
  const counts = await reader.counts(keys);
  expect(counts.map((c) => c.count)).toEqual(keys.map((_, i) => (i === 0 ? 1 : 0)));
  console.log(
    `counts of 100 keys, median of 5 rounds: one POST /api/views/counts ${median(many).toFixed(1)} ms; ` +
      `100 GET /api/views one after another ${median(sequential).toFixed(1)} ms, all at once ${median(parallel).toFixed(1)} ms`,
  );
});
