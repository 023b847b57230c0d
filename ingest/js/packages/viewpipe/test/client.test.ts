import { describe, expect, test } from "vitest";

import { INVALID_URL, NETWORK_ERROR, ViewpipeError, createClient, isViewpipeError } from "../src/index.js";
import { API_URL, TYPE, client, freshKey, settledCount } from "./live.js";

/** The error `promise` rejects with (failing when it resolves). */
async function rejection(promise: Promise<unknown>): Promise<ViewpipeError> {
  try {
    await promise;
  } catch (e) {
    expect(isViewpipeError(e)).toBe(true);
    return e as ViewpipeError;
  }
  throw new Error("resolved, expected a ViewpipeError");
}

describe("view", () => {
  test("answers the key's count including the view, and the GET catches up", async () => {
    const views = client();
    const key = freshKey("view");
    const first = await views.view(key);
    expect(first.count).toBe(1);
    expect(first.eventId).toMatch(/^[0-9a-f-]{32,36}$/);
    expect(first.dropped).toBeUndefined();
    expect(await settledCount(key, 1)).toBe(1);
    const second = await views.view({ ...key, path: "/posts/1", occurredAt: new Date() });
    expect(second.count).toBe(2);
    expect(second.eventId).not.toBe(first.eventId);
    expect(await settledCount(key, 2)).toBe(2);
  });

  test("the same eventId twice counts once", async () => {
    const views = client();
    const key = freshKey("same-event");
    const eventId = `retry-${key.contentId}`;
    expect((await views.view({ ...key, eventId })).eventId).toBe(eventId);
    await views.view({ ...key, eventId });
    // A third view with another id follows both in the key's partition: once it is
    // counted, so were they.
    await views.view(key);
    expect(await settledCount(key, 2)).toBe(2);
  });

  test("a lost answer is retried with the same eventId and counts once", async () => {
    const key = freshKey("lost-answer");
    const sent: string[] = [];
    let lose = true;
    // The real request reaches the ingest; only its answer is lost on the way back.
    const losing: typeof fetch = async (input, init) => {
      if (init?.method === "POST") sent.push(String(init.body));
      const answer = await fetch(input, init);
      if (init?.method === "POST" && lose) {
        lose = false;
        await answer.text();
        throw new TypeError("fetch failed (the test dropped the answer)");
      }
      return answer;
    };
    const views = client({ fetch: losing, maxRetryDelayMs: 1000 });
    const result = await views.view(key);
    expect(sent).toHaveLength(2);
    const ids = sent.map((body) => JSON.parse(body).eventId);
    expect(ids[0]).toBe(result.eventId);
    expect(ids[1]).toBe(result.eventId);
    await client().view(key);
    expect(await settledCount(key, 2)).toBe(2);
  });
});

describe("errors", () => {
  test("an unknown contentType is the API's unknown_namespace, naming the field", async () => {
    const e = await rejection(client().view({ contentType: "no-such-type", contentId: "x" }));
    expect(e).toBeInstanceOf(ViewpipeError);
    expect([e.status, e.code, e.field]).toEqual([400, "unknown_namespace", "contentType"]);
    expect(e.message).toContain("no-such-type");
    expect(e.retryable).toBe(false);
  });

  test("an invalid contentId is invalid_value on contentId, for reads too", async () => {
    const bad = { contentType: TYPE, contentId: "has space" };
    // One call at a time: a second promise rejecting while the first is awaited
    // would be an unhandled rejection.
    for (const call of [() => client().view(bad), () => client().count(bad)]) {
      const e = await rejection(call());
      expect([e.status, e.code, e.field]).toEqual([400, "invalid_value", "contentId"]);
    }
  });

  test("no ingest is network_error, after the retries", async () => {
    let tries = 0;
    const counting: typeof fetch = (input, init) => {
      tries += 1;
      return fetch(input, init);
    };
    const nowhere = createClient({ url: "http://127.0.0.1:1", fetch: counting, retries: 2 });
    const e = await rejection(nowhere.view(freshKey("nowhere")));
    expect([e.status, e.code, e.retryable]).toEqual([0, NETWORK_ERROR, true]);
    expect(tries).toBe(3);
  });

  test("a relative url without a page is invalid_url at once, not retried", async () => {
    let tries = 0;
    const counting: typeof fetch = (input, init) => {
      tries += 1;
      return fetch(input, init);
    };
    const relative = createClient({ url: "/views", fetch: counting, retries: 2 });
    const e = await rejection(relative.count(freshKey("relative")));
    expect([e.status, e.code, e.retryable]).toEqual([0, INVALID_URL, false]);
    expect(tries).toBe(0);
  });

  test("a range the API refuses is its code, not swallowed", async () => {
    const e = await rejection(client().daily({ ...freshKey("range"), from: "2026-02-01", to: "2026-01-01" }));
    expect([e.status, e.code]).toEqual([400, "invalid_range"]);
  });
});

describe("reads", () => {
  test("count of a key never seen is 0", async () => {
    expect(await client().count(freshKey("never"))).toBe(0);
  });

  test("daily answers one zero-filled entry per day, today's counting the view", async () => {
    const views = client();
    const key = freshKey("daily");
    await views.view(key);
    await settledCount(key, 1);
    const days = await views.daily({ ...key, days: 3 });
    expect(days).toHaveLength(3);
    const today = new Date().toISOString().slice(0, 10);
    expect(days[2]).toMatchObject({ day: today, count: 1 });
    expect(days[0]!.count).toBe(0);
    const ranged = await views.daily({ ...key, from: new Date(), to: today });
    expect(ranged.map((d) => d.day)).toEqual([today]);
  });

  test("top answers items of the namespace", async () => {
    const items = await client().top({ contentType: TYPE, limit: 5 });
    expect(Array.isArray(items)).toBe(true);
    expect(items.length).toBeLessThanOrEqual(5);
    for (const item of items) {
      expect(typeof item.contentId).toBe("string");
      expect(typeof item.count).toBe("number");
    }
  });

  test("badgeUrl's image shows the key's count", async () => {
    const views = client();
    const key = freshKey("badge");
    for (let i = 0; i < 3; i++) await views.view(key);
    await settledCount(key, 3);
    const answer = await fetch(views.badgeUrl({ ...key, label: "reads", style: "flat-square" }));
    expect(answer.status).toBe(200);
    expect(answer.headers.get("content-type")).toMatch(/^image\/svg\+xml/);
    const svg = await answer.text();
    expect(svg).toMatch(/^<svg[^>]*>/);
    expect(svg).toContain(">reads<");
    expect(svg).toContain(">3<");
  });

  test("badgeUrl is the badge endpoint with its options", () => {
    const url = new URL(
      createClient({ url: `${API_URL}/prefix` }).badgeUrl({
        contentType: TYPE,
        contentId: "a b",
        label: "reads",
        style: "flat-square",
      }),
    );
    expect(url.pathname).toBe("/prefix/api/views/badge.svg");
    expect(Object.fromEntries(url.searchParams)).toEqual({
      contentType: TYPE,
      contentId: "a b",
      label: "reads",
      style: "flat-square",
    });
  });
});
