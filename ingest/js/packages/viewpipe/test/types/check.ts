/**
 * The hand-written types of the client (`src/types.ts`, `src/client.ts`) checked
 * against the types openapi-typescript generates from a live ingest's
 * `/openapi.json` (written to `generated/openapi.ts` by `openapi.test.ts`, which
 * then runs `tsc --noEmit` on this file). A field added, removed, renamed or
 * retyped on either side fails to compile.
 *
 * - What the client sends must be what the API takes: each body the client posts
 *   is assignable to the document's, with the same fields. `contentType` is an
 *   enum of the deployment's NAMESPACES there, a string here.
 * - What the API answers must be readable as the client's types: the document's
 *   answers are assignable to them, with the same fields.
 * - Each query the client sends has the document's parameters.
 */
import type { paths } from "./generated/openapi.js";
import type {
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
} from "../../src/types.js";
import type { BadgeOptions, DayRange, TopQuery } from "../../src/client.js";

type Op<P extends keyof paths, M extends "get" | "post"> = NonNullable<paths[P][M]>;
type Json<T> = T extends { content: { "application/json": infer B } } ? B : never;
type Body<O> = O extends { requestBody?: infer R } ? Json<NonNullable<R>> : never;
type Answer<O, S extends number> = O extends { responses: infer R } ? (S extends keyof R ? Json<R[S]> : never) : never;
type Query<O> = O extends { parameters: { query?: infer Q } } ? NonNullable<Q> : never;
/** The document's body with `contentType` as the client types it. */
type Widen<T> = { [K in keyof T]: K extends "contentType" ? string : T[K] };

type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;
/** `A` is assignable to `B`, and both have the same fields. */
type Fits<A, B> = [A] extends [B] ? Same<keyof A, keyof B> : false;
function ok<T extends true>(): T | undefined {
  return undefined;
}

// What the client sends.
type PostView = Op<"/api/views", "post">;
ok<Fits<ViewRequest, Widen<Body<PostView>>>>();
type PostCounts = Op<"/api/views/counts", "post">;
type CountsBody = Body<PostCounts>;
ok<Same<keyof CountsRequest, keyof CountsBody>>();
ok<Fits<ContentKey, Widen<CountsBody extends { keys: (infer K)[] } ? K : never>>>();

// What it reads.
ok<Fits<Answer<PostView, 202>, ViewAccepted>>();
ok<Fits<Answer<Op<"/api/views", "get">, 200>, CountResponse>>();
type CountsAnswer = Answer<PostCounts, 200>;
ok<Fits<CountsAnswer, CountsResponse>>();
ok<Fits<CountsAnswer extends { counts: (infer K)[] } ? K : never, KeyCount>>();
type Daily = Op<"/api/views/daily", "get">;
ok<Fits<Answer<Daily, 200>, DailyResponse>>();
ok<Fits<Answer<Daily, 200> extends { days: (infer D)[] } ? D : never, DayCount>>();
type Top = Op<"/api/views/top", "get">;
ok<Fits<Answer<Top, 200>, TopResponse>>();
ok<Fits<Answer<Top, 200> extends { items: (infer I)[] } ? I : never, TopItem>>();
ok<Fits<Answer<PostView, 400>, ErrorBody>>();
ok<Fits<Answer<PostView, 400> extends { error: infer E } ? E : never, ErrorDetail>>();
ok<Fits<Answer<PostCounts, 400>, ErrorBody>>();

// The queries it sends. `key` (a key in the query) is in the document only where
// the deployment wants keys, so it is left out of the comparison.
type Params<T> = Exclude<keyof T, "key">;
ok<Same<Params<Query<Op<"/api/views", "get">>>, keyof ContentKey>>();
ok<Same<Params<Query<Daily>>, keyof (ContentKey & DayRange)>>();
ok<Same<Params<Query<Top>>, keyof TopQuery>>();
type Badge = Query<Op<"/api/views/badge.svg", "get">>;
ok<Same<Params<Badge>, Params<BadgeOptions>>>();
ok<Same<NonNullable<Badge extends { style?: infer S } ? S : never>, NonNullable<BadgeOptions["style"]>>>();
