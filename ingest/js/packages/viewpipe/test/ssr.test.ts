// Server rendering, as a Next.js App Router page does it: the built package,
// imported by its name, in Node (no window, no document).
import { createElement } from "react";
import { renderToString } from "react-dom/server";
import { expect, test } from "vitest";

import { createClient } from "viewpipe";
import { ViewpipeProvider, useViews } from "viewpipe/react";

test("the built package imports and renders on the server without window or document", () => {
  expect(typeof (globalThis as { window?: unknown }).window).toBe("undefined");
  expect(typeof (globalThis as { document?: unknown }).document).toBe("undefined");
  function Views() {
    const { viewCount, isLoading } = useViews({ contentType: "resource", contentId: "ssr" });
    return createElement("span", null, isLoading ? "…" : `${viewCount} views`);
  }
  // A client that must not be used: rendering on the server sends nothing.
  const client = createClient({
    url: "http://127.0.0.1:1",
    fetch: () => {
      throw new Error("a request during server rendering");
    },
  });
  const html = renderToString(createElement(ViewpipeProvider, { client }, createElement(Views)));
  expect(html).toBe("<span>…</span>");
});

test("the hook module is a client module", async () => {
  const { readFile } = await import("node:fs/promises");
  const built = await readFile(new URL("../dist/react.js", import.meta.url), "utf8");
  expect(built.startsWith('"use client";')).toBe(true);
});
