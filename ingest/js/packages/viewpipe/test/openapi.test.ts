// The client's types against the live service's: generate types from the
// ingest's /openapi.json with openapi-typescript, then type-check
// test/types/check.ts, which assigns between them and the hand-written ones.
import { execFile } from "node:child_process";
import { mkdir, writeFile } from "node:fs/promises";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

import openapiTS, { astToString } from "openapi-typescript";
import { expect, test } from "vitest";

import { API_URL } from "./live.js";

const here = (path: string) => fileURLToPath(new URL(path, import.meta.url));

test("the client's types match the live /openapi.json", async () => {
  const document = new URL("openapi.json", API_URL.endsWith("/") ? API_URL : `${API_URL}/`);
  const generated = astToString(await openapiTS(document));
  await mkdir(here("./types/generated"), { recursive: true });
  await writeFile(here("./types/generated/openapi.ts"), generated);
  const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");
  const run = promisify(execFile)(process.execPath, [tsc, "--noEmit", "-p", here("./types/tsconfig.json")]);
  const outcome = await run.then(
    () => "",
    (e: { stdout?: string; stderr?: string }) => `${e.stdout ?? ""}${e.stderr ?? ""}` || String(e),
  );
  expect(outcome, "tsc over test/types/check.ts (the generated types: test/types/generated/openapi.ts)").toBe("");
});
