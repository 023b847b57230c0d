import { defineConfig } from "vitest/config";

// The tests talk to a live ingest and aggregator: VIEWPIPE_URL (default
// http://127.0.0.1:8080, what deploy/local/run serves). See packages/viewpipe/test/live.ts.
export default defineConfig({
  test: {
    include: ["packages/*/test/**/*.test.{ts,tsx}"],
    globalSetup: ["packages/viewpipe/test/reachable.ts"],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    reporters: ["verbose"],
  },
  esbuild: { jsx: "automatic" },
});
