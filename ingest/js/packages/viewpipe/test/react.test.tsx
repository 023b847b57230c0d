// @vitest-environment jsdom
import { StrictMode, useEffect } from "react";
import { act, cleanup, render, screen, waitFor } from "@testing-library/react";
import { afterEach, expect, test } from "vitest";

import type { Client } from "../src/index.js";
import { ViewpipeProvider, useViews } from "../src/react.js";
import { TYPE, client, freshKey, settledCount } from "./live.js";

afterEach(cleanup);

/** A client of the live ingest that counts the views it posts. */
function countingClient(): { client: Client; posts: () => number } {
  let posts = 0;
  const counting: typeof fetch = (input, init) => {
    if (init?.method === "POST") posts += 1;
    return fetch(input, init);
  };
  return { client: client({ fetch: counting }), posts: () => posts };
}

interface Seen {
  counts: number[];
  increments: Set<unknown>;
  effectRuns?: number;
}

/** The seed design's use of the hook, recording what it showed. */
function Views({ contentId, seen, tick }: { contentId: string; seen: Seen; tick?: number }) {
  const { viewCount, incrementView, isLoading, error } = useViews({ contentId, contentType: TYPE });
  useEffect(() => {
    seen.effectRuns = (seen.effectRuns ?? 0) + 1;
    incrementView();
  }, [incrementView]);
  seen.counts.push(viewCount);
  seen.increments.add(incrementView);
  return (
    <p data-testid="views" data-tick={tick}>
      {error ? `error ${error.code}` : isLoading ? "loading" : `${viewCount} views`}
    </p>
  );
}

function app(c: Client, contentId: string, seen: Seen, tick = 0) {
  return (
    <StrictMode>
      <ViewpipeProvider client={c}>
        <Views contentId={contentId} seen={seen} tick={tick} />
      </ViewpipeProvider>
    </StrictMode>
  );
}

const nonDecreasing = (xs: number[]) => xs.every((x, i) => i === 0 || x >= xs[i - 1]!);

test("one mount under StrictMode counts one view; re-renders count none; the count never goes down", async () => {
  const { client: c, posts } = countingClient();
  const key = freshKey("hook");
  const seen: Seen = { counts: [], increments: new Set() };
  const page = render(app(c, key.contentId, seen));
  await waitFor(() => expect(screen.getByTestId("views").textContent).toBe("1 views"));
  for (let tick = 1; tick <= 5; tick++) {
    page.rerender(app(c, key.contentId, seen, tick));
  }
  await act(() => new Promise((resolve) => setTimeout(resolve, 300)));
  // StrictMode ran the effect twice (mount, unmount, mount); one view was posted.
  expect(seen.effectRuns).toBe(2);
  expect(posts()).toBe(1);
  expect(seen.increments.size).toBe(1);
  expect(nonDecreasing(seen.counts)).toBe(true);
  expect(screen.getByTestId("views").textContent).toBe("1 views");
  page.unmount();
  // A view after the hook's follows it in the key's partition: once it is counted,
  // so was everything the hook sent.
  await client().view(key);
  expect(await settledCount(key, 2)).toBe(2);

  // A new mount is a new view, shown with the count before it.
  const again: Seen = { counts: [], increments: new Set() };
  render(app(c, key.contentId, again));
  await waitFor(() => expect(screen.getByTestId("views").textContent).toBe("3 views"));
  expect(posts()).toBe(2);
  expect(nonDecreasing(again.counts)).toBe(true);
  expect(await settledCount(key, 3)).toBe(3);
});

test("a refused view is the hook's error, with the API's code", async () => {
  const seen: Seen = { counts: [], increments: new Set() };
  function Refused() {
    const { error, isLoading } = useViews({ contentId: "x", contentType: "no-such-type" });
    seen.counts.push(isLoading ? -1 : 0);
    return <p data-testid="views">{error ? `${error.status} ${error.code} ${error.field}` : "none"}</p>;
  }
  render(
    <StrictMode>
      <ViewpipeProvider client={client()}>
        <Refused />
      </ViewpipeProvider>
    </StrictMode>,
  );
  await waitFor(() =>
    expect(screen.getByTestId("views").textContent).toBe("400 unknown_namespace contentType"),
  );
});
