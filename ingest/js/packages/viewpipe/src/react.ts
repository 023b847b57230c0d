"use client";
/**
 * viewpipe's React hook: `useViews({ contentId, contentType })` answers
 * `{ viewCount, incrementView, isLoading, error }`.
 *
 * What it promises:
 * - One mount counts one view. `incrementView` sends this mount's view once, with
 *   one `eventId` kept in a ref: StrictMode's second effect run, re-renders and
 *   repeated calls get the same answer without sending again, and a retry after a
 *   failure reuses the id, which the ingest de-duplicates. A new mount (or another
 *   key) is a new view.
 * - `incrementView` keeps its identity while the key and the client stay the same,
 *   so `useEffect(() => { incrementView() }, [incrementView])` runs once per mount.
 * - `viewCount` never goes down: it is the largest count any answer gave (the
 *   count a `GET` answers right after a view can still lack it, until the
 *   aggregator has consumed it).
 * - Nothing touches `window` or `document` while importing or rendering, so it
 *   renders on the server (Next.js App Router: this module is a client module).
 */
import { createContext, createElement, useCallback, useContext, useEffect, useMemo, useRef, useState } from "react";
import type { ReactNode } from "react";

import { createClient } from "./client.js";
import type { Client } from "./client.js";
import { ViewpipeError } from "./errors.js";
import { newEventId } from "./event-id.js";
import type { ContentKey } from "./types.js";

const ClientContext = createContext<Client | null>(null);

export interface ViewpipeProviderProps {
  /** The client the hooks below use; or give `url` (and keys) to make one. */
  client?: Client;
  /** The ingest's address, when no `client` is given. */
  url?: string;
  /** A write key (`X-Viewpipe-Key`), when no `client` is given. */
  writeKey?: string;
  /** The read key (`Authorization: Bearer`), when no `client` is given. */
  readKey?: string;
  children?: ReactNode;
}

/** Supplies a client to every `useViews` below it. */
export function ViewpipeProvider({ client, url, writeKey, readKey, children }: ViewpipeProviderProps) {
  const value = useMemo(() => {
    if (client) return client;
    if (!url) throw new Error("viewpipe: <ViewpipeProvider> needs a client or a url");
    return createClient({ url, key: writeKey, readKey });
  }, [client, url, writeKey, readKey]);
  return createElement(ClientContext.Provider, { value }, children);
}

/** The client of the nearest `ViewpipeProvider`, or `null`. */
export function useViewpipeClient(): Client | null {
  return useContext(ClientContext);
}

export interface UseViewsOptions extends ContentKey {
  /** Default: the nearest `ViewpipeProvider`'s. */
  client?: Client;
}

export interface UseViewsResult {
  /** The key's count: 0 until an answer came, then never lower than it was. */
  viewCount: number;
  /**
   * Counts this mount's view of the key (once, however often it is called), and
   * resolves to the count the ingest answered (`null` on failure: see `error`).
   */
  incrementView: () => Promise<number | null>;
  /** True until the first count (or error) came for this key. */
  isLoading: boolean;
  /** The last failure for this key, or `null`. */
  error: ViewpipeError | null;
}

interface Shown {
  key: string;
  viewCount: number;
  isLoading: boolean;
  error: ViewpipeError | null;
}

/** This mount's view of one key: its id, and its answer once sent. */
interface Sent {
  key: string;
  eventId: string;
  answer: Promise<number | null> | null;
}

const fresh = (key: string): Shown => ({ key, viewCount: 0, isLoading: true, error: null });

export function useViews({ contentId, contentType, client: given }: UseViewsOptions): UseViewsResult {
  const fromContext = useContext(ClientContext);
  const client = given ?? fromContext;
  if (!client) {
    throw new Error("viewpipe: useViews needs a client: wrap it in <ViewpipeProvider url=...> or pass { client }");
  }
  const key = `${contentType}\u0000${contentId}`;
  const [state, setState] = useState<Shown>(() => fresh(key));
  const shown = state.key === key ? state : fresh(key);
  // The key answers may still be shown for: an answer for an earlier key is dropped.
  const active = useRef(key);
  const sent = useRef<Sent | null>(null);

  useEffect(() => {
    active.current = key;
  }, [key]);

  const answered = useCallback((forKey: string, count: number | null) => {
    if (active.current !== forKey || count === null) return;
    setState((s) => {
      const base = s.key === forKey ? s : fresh(forKey);
      if (!base.isLoading && count <= base.viewCount) return base;
      return { ...base, viewCount: Math.max(base.viewCount, count), isLoading: false };
    });
  }, []);

  const failed = useCallback((forKey: string, e: unknown) => {
    if (active.current !== forKey) return;
    const error =
      e instanceof ViewpipeError
        ? e
        : new ViewpipeError({ status: 0, code: "unexpected", message: String(e), cause: e });
    setState((s) => ({ ...(s.key === forKey ? s : fresh(forKey)), isLoading: false, error }));
  }, []);

  // The count to show before (or without) a view of this mount.
  useEffect(() => {
    let live = true;
    client.count({ contentType, contentId }).then(
      (count) => live && answered(key, count),
      (e) => live && failed(key, e),
    );
    return () => {
      live = false;
    };
  }, [client, key, contentType, contentId, answered, failed]);

  const incrementView = useCallback((): Promise<number | null> => {
    let slot = sent.current;
    if (slot && slot.key === key && slot.answer) return slot.answer;
    if (!slot || slot.key !== key) {
      slot = { key, eventId: newEventId(), answer: null };
      sent.current = slot;
    }
    const mine = slot;
    const path = typeof location === "undefined" ? undefined : location.pathname.slice(0, 2048);
    mine.answer = client.view({ contentType, contentId, eventId: mine.eventId, path }).then(
      (result) => {
        answered(key, result.count);
        return result.count;
      },
      (e: unknown) => {
        // A later call tries again, with the same eventId.
        mine.answer = null;
        failed(key, e);
        return null;
      },
    );
    return mine.answer;
  }, [client, key, contentType, contentId, answered, failed]);

  return { viewCount: shown.viewCount, incrementView, isLoading: shown.isLoading, error: shown.error };
}
