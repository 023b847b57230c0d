/**
 * The shapes viewpipe's HTTP API takes and answers, written by hand as the
 * ingest's `/openapi.json` states them (`null` where it allows one). A test
 * generates types from a live ingest's document and checks these against them
 * (`test/types/check.ts`), so they cannot drift from the service.
 */

/** A counted thing: a namespace (one of the ingest's `NAMESPACES`) and an id. */
export interface ContentKey {
  /** The namespace, e.g. `"page"` or `"resource"`. */
  contentType: string;
  /** 1 to 128 of `A-Z a-z 0-9 . _ ~ : -`. */
  contentId: string;
}

/** One view, as `POST /api/views` takes it. */
export interface ViewRequest extends ContentKey {
  /** The page the view happened on (at most 2048 characters). */
  path?: string;
  /** The client's session (1 to 128 printable ASCII characters). */
  sessionId?: string;
  /**
   * Idempotency key: views of one key with the same id count once within 24 h.
   * 1 to 128 printable ASCII characters.
   */
  eventId?: string;
  /** When the view happened (RFC 3339); default: when the ingest received it. */
  occurredAt?: string;
}

/** `POST /api/views`'s answer. */
export interface ViewAccepted {
  success: boolean;
  /**
   * The key's count including this view; `null` when it could not be read in
   * time, when the ingest wants a read key the request did not carry, and for a
   * crawler's view.
   */
  count?: number | null;
  /** Present when the view was answered but not counted. */
  dropped?: "crawler" | null;
}

/** `GET /api/views`'s answer. */
export interface CountResponse {
  count: number;
}

/** `POST /api/views/counts`'s body. */
export interface CountsRequest {
  keys: ContentKey[];
}

/** One key's count in `POST /api/views/counts`'s answer. */
export interface KeyCount extends ContentKey {
  count: number;
}

/** `POST /api/views/counts`'s answer: one entry per key asked, in order. */
export interface CountsResponse {
  counts: KeyCount[];
}

/** One UTC day of a key's series. */
export interface DayCount {
  /** `YYYY-MM-DD`. */
  day: string;
  /** Views that day, pending ones included. */
  count: number;
  /** Distinct visitors that day (an estimate, as of the last flush). */
  visitors: number;
}

/** `GET /api/views/daily`'s answer. */
export interface DailyResponse extends ContentKey {
  days: DayCount[];
}

/** One entry of `GET /api/views/top`. */
export interface TopItem {
  contentId: string;
  count: number;
}

/** `GET /api/views/top`'s answer. */
export interface TopResponse {
  items: TopItem[];
}

/** The error inside every error body. */
export interface ErrorDetail {
  /** Stable, snake_case: for programs. */
  code: string;
  /** For people. */
  message: string;
  /** The input at fault, when there is one. */
  field?: string | null;
}

/** Every error answer: `{"success":false,"error":{..}}`. */
export interface ErrorBody {
  success: boolean;
  error: ErrorDetail;
}
