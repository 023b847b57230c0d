/**
 * Codes the client gives to failures that are not an answer of the API (which
 * carries its own code, such as `unknown_namespace` or `rate_limited`).
 */
export const NETWORK_ERROR = "network_error";
/** The request took longer than the client's `timeoutMs`. */
export const TIMEOUT = "timeout";
/** The ingest answered something that is not the API's JSON. */
export const INVALID_RESPONSE = "invalid_response";
/** `createClient`'s `url` is not absolute, and there is no page to resolve it against. */
export const INVALID_URL = "invalid_url";

/**
 * A request the API refused, or that did not get an answer.
 *
 * `status` is the HTTP status (0 when there was no answer); `code` is the API's
 * stable error code (`unknown_namespace`, `invalid_value`, `rate_limited`,
 * `store_unavailable`, ...) or one of the client's own: {@link NETWORK_ERROR},
 * {@link TIMEOUT}, {@link INVALID_RESPONSE}, {@link INVALID_URL}. `field` names the input at fault when
 * the API says so. `retryAfter` is the answer's `Retry-After`, in seconds.
 */
export class ViewpipeError extends Error {
  override readonly name = "ViewpipeError";
  readonly status: number;
  readonly code: string;
  readonly field: string | undefined;
  readonly retryAfter: number | undefined;

  constructor(init: {
    status: number;
    code: string;
    message: string;
    field?: string | undefined;
    retryAfter?: number | undefined;
    cause?: unknown;
  }) {
    super(init.message, init.cause === undefined ? undefined : { cause: init.cause });
    this.status = init.status;
    this.code = init.code;
    this.field = init.field;
    this.retryAfter = init.retryAfter;
  }

  /**
   * Whether trying again may succeed: no answer at all, or the ingest said it is
   * busy or briefly unavailable (429, 503).
   */
  get retryable(): boolean {
    if (this.code === INVALID_URL) return false;
    return this.status === 0 || this.status === 429 || this.status === 503;
  }
}

/** Whether `e` is a {@link ViewpipeError} (also one from another copy of the package). */
export function isViewpipeError(e: unknown): e is ViewpipeError {
  return e instanceof ViewpipeError || (e instanceof Error && e.name === "ViewpipeError");
}
