import { INVALID_RESPONSE, INVALID_URL, NETWORK_ERROR, TIMEOUT, ViewpipeError } from "./errors.js";
import { newEventId } from "./event-id.js";
import type {
  ContentKey,
  CountResponse,
  CountsResponse,
  DailyResponse,
  DayCount,
  KeyCount,
  TopItem,
  TopResponse,
  ViewAccepted,
  ViewRequest,
} from "./types.js";

export interface ClientOptions {
  /** Where the ingest serves the API, e.g. `https://views.example.com` (a path prefix is kept). */
  url: string;
  /** A write key (`X-Viewpipe-Key`), where the ingest sets `WRITE_KEYS`. */
  key?: string;
  /** The read key (`Authorization: Bearer`), where the ingest sets `READ_KEY`. */
  readKey?: string;
  /** The `fetch` to use; default: the global one, looked up at each request. */
  fetch?: typeof fetch;
  /**
   * How many times a request is tried again after no answer, a 429 or a 503
   * (default 2). A view is retried with its `eventId`, so it counts once.
   */
  retries?: number;
  /**
   * The longest wait before a retry, in ms (default 5000). A `Retry-After` longer
   * than this is not waited for: the error is thrown instead.
   */
  maxRetryDelayMs?: number;
  /** How long one attempt may take, in ms (default 15000). */
  timeoutMs?: number;
}

/** One view to count; `contentType` and `contentId` are required. */
export interface ViewInput extends ContentKey {
  path?: string;
  sessionId?: string;
  /** Default: a new random id per `view()` call, kept across its retries. */
  eventId?: string;
  occurredAt?: string | Date;
}

export interface ViewResult {
  /**
   * The key's count including this view, as the ingest answered it; `null` when
   * it does not say (a store slow to answer, a read key missing, a crawler).
   */
  count: number | null;
  /** Set when the view was answered but not counted (`"crawler"`). */
  dropped?: "crawler";
  /** The id the view was sent with (also on its retries). */
  eventId: string;
}

/** A range of UTC days: the last `days` (1 to 366), or `from`..`to` (`YYYY-MM-DD` or a Date). */
export interface DayRange {
  days?: number;
  from?: string | Date;
  to?: string | Date;
}

export interface TopQuery {
  contentType: string;
  from?: string | Date;
  to?: string | Date;
  /** 1 to 100, default 10. */
  limit?: number;
}

export interface BadgeOptions extends ContentKey {
  /** The text left of the count (default `views`, at most 40 characters). */
  label?: string;
  /**
   * The count's background: `blue` (default), `brightgreen`, `green`, `yellow`,
   * `orange`, `red`, `purple`, `grey`, `lightgrey`, or 3 or 6 hex digits without `#`.
   */
  color?: string;
  /** `flat` (default) or `flat-square`. */
  style?: "flat" | "flat-square";
  /**
   * The read key, where the ingest sets `READ_KEY`: it is then part of the URL,
   * for anyone who sees the page to read. Not taken from the client's `readKey`.
   */
  key?: string;
}

export interface Client {
  /** The API's base URL, ending with `/`. */
  readonly url: string;
  /** Counts one view; answers the key's count including it. */
  view(input: ViewInput): Promise<ViewResult>;
  /** The key's count (`GET /api/views`). */
  count(key: ContentKey): Promise<number>;
  /** Counts of up to 100 keys in one request, in the order asked (`POST /api/views/counts`). */
  counts(keys: readonly ContentKey[]): Promise<KeyCount[]>;
  /** One entry per UTC day of the range, ascending, zero-filled (`GET /api/views/daily`). */
  daily(query: ContentKey & DayRange): Promise<DayCount[]>;
  /** The namespace's most viewed keys over a range of days (`GET /api/views/top`). */
  top(query: TopQuery): Promise<TopItem[]>;
  /** The URL of the key's counter image (`GET /api/views/badge.svg`), for an `<img src>`. */
  badgeUrl(options: BadgeOptions): string;
}

const DEFAULT_RETRIES = 2;
const DEFAULT_MAX_RETRY_DELAY_MS = 5000;
const DEFAULT_TIMEOUT_MS = 15000;
/** The first wait before a retry without `Retry-After`; doubled each time. */
const BACKOFF_MS = 200;

type Query = Record<string, string | number | undefined>;

interface Request {
  method: "GET" | "POST";
  path: string;
  query?: Query;
  body?: unknown;
  /** Send the write key too (POST /api/views). */
  write?: boolean;
}

/**
 * A client of one ingest. Creating one does nothing but keep the options: no
 * request, no access to `window`, so it may be created during server rendering.
 */
export function createClient(options: ClientOptions): Client {
  if (!options || typeof options.url !== "string" || options.url === "") {
    throw new TypeError("viewpipe: createClient needs { url }, the ingest's address");
  }
  const base = options.url.endsWith("/") ? options.url : `${options.url}/`;
  const retries = Math.max(0, options.retries ?? DEFAULT_RETRIES);
  const maxDelay = options.maxRetryDelayMs ?? DEFAULT_MAX_RETRY_DELAY_MS;
  const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;

  function urlOf(path: string, query: Query = {}): string {
    // A relative url ("/views") is taken relative to the page, where there is one.
    const page = typeof location === "undefined" ? undefined : location.href;
    let root: URL;
    try {
      root = new URL(base, page);
    } catch (cause) {
      throw new ViewpipeError({
        status: 0,
        code: INVALID_URL,
        message: `viewpipe: createClient's url ${JSON.stringify(options.url)} is not an absolute URL` +
          (page ? "" : " (a relative one needs a page to resolve against)"),
        cause,
      });
    }
    const url = new URL(path, root);
    for (const [name, value] of Object.entries(query)) {
      if (value !== undefined) url.searchParams.set(name, String(value));
    }
    return url.href;
  }

  async function once(request: Request): Promise<unknown> {
    const doFetch = options.fetch ?? globalThis.fetch;
    if (typeof doFetch !== "function") {
      throw new ViewpipeError({
        status: 0,
        code: NETWORK_ERROR,
        message: "viewpipe: no fetch in this environment; pass one to createClient",
      });
    }
    const headers: Record<string, string> = { accept: "application/json" };
    if (options.readKey) headers.authorization = `Bearer ${options.readKey}`;
    if (request.write && options.key) headers["x-viewpipe-key"] = options.key;
    let body: string | undefined;
    if (request.body !== undefined) {
      body = JSON.stringify(request.body);
      // The API reads text/plain as JSON: a browser sends it to another origin
      // without a preflight (unless a key header asks for one).
      headers["content-type"] = "text/plain;charset=UTF-8";
    }
    const controller = typeof AbortController === "function" ? new AbortController() : undefined;
    let timedOut = false;
    const timer = controller
      ? setTimeout(() => {
          timedOut = true;
          controller.abort();
        }, timeoutMs)
      : undefined;
    let response: Response;
    let target: string;
    try {
      target = urlOf(request.path, request.query);
    } catch (e) {
      clearTimeout(timer);
      throw e;
    }
    try {
      response = await doFetch(target, {
        method: request.method,
        headers,
        body,
        credentials: "omit",
        signal: controller?.signal,
      });
    } catch (cause) {
      clearTimeout(timer);
      throw new ViewpipeError({
        status: 0,
        code: timedOut ? TIMEOUT : NETWORK_ERROR,
        message: timedOut
          ? `viewpipe: no answer from ${base} within ${timeoutMs} ms`
          : `viewpipe: ${request.method} ${request.path} failed: ${describe(cause)}`,
        cause,
      });
    }
    let text: string;
    try {
      text = await response.text();
    } catch (cause) {
      throw new ViewpipeError({
        status: 0,
        code: timedOut ? TIMEOUT : NETWORK_ERROR,
        message: `viewpipe: the answer to ${request.method} ${request.path} was cut: ${describe(cause)}`,
        cause,
      });
    } finally {
      clearTimeout(timer);
    }
    let json: unknown;
    try {
      json = text === "" ? undefined : JSON.parse(text);
    } catch {
      json = undefined;
    }
    if (response.ok) {
      if (json === undefined || json === null || typeof json !== "object") {
        throw new ViewpipeError({
          status: response.status,
          code: INVALID_RESPONSE,
          message: `viewpipe: ${request.method} ${request.path} answered ${response.status} without a JSON object`,
        });
      }
      return json;
    }
    const retryAfter = parseRetryAfter(response.headers.get("retry-after"));
    const detail = errorDetail(json);
    throw new ViewpipeError({
      status: response.status,
      code: detail?.code ?? INVALID_RESPONSE,
      message:
        detail?.message ??
        `viewpipe: ${request.method} ${request.path} answered ${response.status} without the API's error body`,
      field: detail?.field,
      retryAfter,
    });
  }

  /** `once`, tried again (with the same body) after no answer, a 429 or a 503. */
  async function send(request: Request): Promise<unknown> {
    for (let attempt = 0; ; attempt++) {
      try {
        return await once(request);
      } catch (e) {
        if (!(e instanceof ViewpipeError) || !e.retryable || attempt >= retries) throw e;
        const wait =
          e.retryAfter !== undefined ? e.retryAfter * 1000 : BACKOFF_MS * 2 ** attempt * (0.5 + Math.random());
        if (wait > maxDelay) throw e;
        await new Promise((resolve) => setTimeout(resolve, wait));
      }
    }
  }

  return {
    url: base,

    async view(input) {
      const eventId = input.eventId ?? newEventId();
      const body: ViewRequest = {
        contentType: input.contentType,
        contentId: input.contentId,
        path: input.path,
        sessionId: input.sessionId,
        eventId,
        occurredAt: input.occurredAt instanceof Date ? input.occurredAt.toISOString() : input.occurredAt,
      };
      const answer = (await send({ method: "POST", path: "api/views", body, write: true })) as ViewAccepted;
      const result: ViewResult = { count: answer.count ?? null, eventId };
      if (answer.dropped) result.dropped = answer.dropped;
      return result;
    },

    async count(key) {
      const answer = (await send({
        method: "GET",
        path: "api/views",
        query: { contentType: key.contentType, contentId: key.contentId },
      })) as CountResponse;
      return answer.count;
    },

    async counts(keys) {
      if (keys.length === 0) return [];
      const body = { keys: keys.map((k) => ({ contentType: k.contentType, contentId: k.contentId })) };
      const answer = (await send({ method: "POST", path: "api/views/counts", body })) as CountsResponse;
      return answer.counts;
    },

    async daily(query) {
      const answer = (await send({
        method: "GET",
        path: "api/views/daily",
        query: {
          contentType: query.contentType,
          contentId: query.contentId,
          days: query.days,
          from: day(query.from),
          to: day(query.to),
        },
      })) as DailyResponse;
      return answer.days;
    },

    async top(query) {
      const answer = (await send({
        method: "GET",
        path: "api/views/top",
        query: { contentType: query.contentType, from: day(query.from), to: day(query.to), limit: query.limit },
      })) as TopResponse;
      return answer.items;
    },

    badgeUrl(badge) {
      return urlOf("api/views/badge.svg", {
        contentType: badge.contentType,
        contentId: badge.contentId,
        label: badge.label,
        color: badge.color,
        style: badge.style,
        key: badge.key,
      });
    },
  };
}

/** A Date as its UTC day, `YYYY-MM-DD`; a string as given. */
function day(value: string | Date | undefined): string | undefined {
  return value instanceof Date ? value.toISOString().slice(0, 10) : value;
}

/** `Retry-After` in seconds (a number of seconds or an HTTP date), if any. */
function parseRetryAfter(value: string | null): number | undefined {
  if (value === null || value.trim() === "") return undefined;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return Math.max(0, seconds);
  const date = Date.parse(value);
  return Number.isNaN(date) ? undefined : Math.max(0, (date - Date.now()) / 1000);
}

/** The `error` of an API error body, when `json` is one. */
function errorDetail(json: unknown): { code: string; message: string; field?: string } | undefined {
  if (typeof json !== "object" || json === null) return undefined;
  const error = (json as { error?: unknown }).error;
  if (typeof error !== "object" || error === null) return undefined;
  const { code, message, field } = error as Record<string, unknown>;
  if (typeof code !== "string") return undefined;
  return {
    code,
    message: typeof message === "string" ? message : code,
    field: typeof field === "string" ? field : undefined,
  };
}

function describe(e: unknown): string {
  if (e instanceof Error) {
    const cause = (e as { cause?: unknown }).cause;
    return cause instanceof Error ? `${e.message} (${cause.message})` : e.message;
  }
  return String(e);
}
