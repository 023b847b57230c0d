/**
 * viewpipe's client: count views and read counts from an ingest.
 *
 * ```ts
 * import { createClient } from "viewpipe";
 * const views = createClient({ url: "https://views.example.com" });
 * const { count } = await views.view({ contentType: "page", contentId: "home" });
 * ```
 *
 * The React hook is in `viewpipe/react`.
 */
export { createClient } from "./client.js";
export type { BadgeOptions, Client, ClientOptions, DayRange, TopQuery, ViewInput, ViewResult } from "./client.js";
export { INVALID_RESPONSE, INVALID_URL, NETWORK_ERROR, TIMEOUT, ViewpipeError, isViewpipeError } from "./errors.js";
export { newEventId } from "./event-id.js";
export type {
  ContentKey,
  CountResponse,
  CountsRequest,
  CountsResponse,
  DailyResponse,
  DayCount,
  ErrorBody,
  ErrorDetail,
  KeyCount,
  TopItem,
  TopResponse,
  ViewAccepted,
  ViewRequest,
} from "./types.js";
