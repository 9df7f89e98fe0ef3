// A small client written against the types openapi-typescript generates from /openapi.json
// (schema.d.ts, made by scripts/typescript-client). It must compile under `tsc --strict`
// without a single cast: the document, not hand-written types, tells a client what the server
// answers. The `@ts-expect-error` lines are the other half: a typo in a status or a kind must
// not compile, which holds only while the document says those fields are enums.

import type { components, paths } from './schema';

type Schemas = components['schemas'];
export type Job = Schemas['JobOut'];
export type JobKind = Schemas['JobKind'];
export type JobStatus = Schemas['JobStatus'];
export type ImportSummary = Schemas['ImportSummary'];
export type Message = Schemas['MessageOut'];
export type MessageStatus = Schemas['MessageStatus'];

type Json = 'application/json; charset=utf-8';
type GetJob = paths['/api/jobs/{id}']['get'];
type ListJobsQuery = NonNullable<paths['/api/jobs']['get']['parameters']['query']>;
type ListMessages = paths['/api/crm/conversations/{id}/messages']['get'];

/** The summary of an import job, once it has one (a running import has none yet). */
export function importSummary(job: Job): ImportSummary | null {
  const result = job.result;
  if (job.kind !== 'import_csv' || result === null) return null;
  // The result's schema is one of the kinds' results; only an import's has a summary.
  if (!('summary' in result)) return null;
  return result.summary;
}

/** Every data row is counted once. */
export function rowsAccountedFor(s: ImportSummary): number {
  return s.successfulInserts + s.updated + s.unchanged + s.skipped + s.errorCount;
}

export function describeImport(s: ImportSummary): string {
  const lines = [
    `${s.totalRows} rows: ${s.successfulInserts} new, ${s.updated} updated, ` +
      `${s.unchanged} unchanged, ${s.skipped} skipped, ${s.errorCount} refused`,
    ...s.errors.map((e) => `row ${e.row}: ${e.error}`),
  ];
  if (s.cancelled && s.stoppedAtRow !== null) lines.push(`cancelled after row ${s.stoppedAtRow}`);
  return lines.join('\n');
}

/** What a creator reads beside an outbound message: every status handled, checked by tsc. */
export function statusLabel(status: MessageStatus): string {
  switch (status) {
    case 'queued':
      return 'waiting for its turn';
    case 'sending':
      return 'being delivered';
    case 'sent':
      return 'delivered';
    case 'failed':
      return 'failed';
    default: {
      // A status the document adds later makes this line fail to compile.
      const unhandled: never = status;
      return unhandled;
    }
  }
}

export function isFinal(status: JobStatus): boolean {
  switch (status) {
    case 'queued':
    case 'running':
      return false;
    case 'succeeded':
    case 'failed':
    case 'cancelled':
      return true;
    default: {
      const unhandled: never = status;
      return unhandled;
    }
  }
}

/** A GET with the caller's token; its body is read by the caller, into the type it expects. */
async function get(base: string, token: string, path: string): Promise<Response> {
  const resp = await fetch(new URL(path, base), { headers: { Authorization: `Bearer ${token}` } });
  if (!resp.ok) throw new Error(`GET ${path}: ${resp.status} ${await resp.text()}`);
  return resp;
}

/** Polls an import job until it is final; its summary, or why there is none. */
export async function waitForImport(base: string, token: string, jobId: string): Promise<ImportSummary> {
  for (;;) {
    const resp = await get(base, token, `/api/jobs/${encodeURIComponent(jobId)}`);
    const job: GetJob['responses']['200']['content'][Json] = await resp.json();
    if (isFinal(job.status)) {
      const summary = importSummary(job);
      if (summary === null) throw new Error(`import ${job.status}: ${job.error ?? 'no summary'}`);
      return summary;
    }
    await new Promise((r) => setTimeout(r, 500));
  }
}

export async function outboundLabels(base: string, token: string, conversationId: number): Promise<string[]> {
  const resp = await get(base, token, `/api/crm/conversations/${conversationId}/messages`);
  const page: ListMessages['responses']['200']['content'][Json] = await resp.json();
  return page.items.filter((m) => m.direction === 'out').map((m) => statusLabel(m.status));
}

export const importJobs: ListJobsQuery = { kind: 'import_csv', status: 'succeeded', limit: 10 };

// What must not compile.
// @ts-expect-error a message status is one of four words, and 'snet' is not one of them
export const typo: MessageStatus = 'snet';
// @ts-expect-error `kind` on GET /api/jobs is a job kind, not any string
export const badKind: ListJobsQuery = { kind: 'imports' };
// @ts-expect-error a direction is `in` or `out`
export const badDirection: Message['direction'] = 'outbound';
