// CSV built in the browser, safe to open in a spreadsheet.

/**
 * One cell: a value starting with =, +, -, @, tab or carriage return gets a leading single
 * quote so a spreadsheet shows it as text instead of running it as a formula (OWASP "CSV
 * injection"); then quoted when it holds a comma, quote or line break.
 */
export function cell(v) {
  let s = v === null || v === undefined ? '' : String(v);
  if (/^[=+\-@\t\r]/.test(s)) s = "'" + s;
  if (/[",\r\n]/.test(s)) s = '"' + s.replace(/"/g, '""') + '"';
  return s;
}

/** A CSV document from a header row and rows of values. */
export function toCsv(header, rows) {
  return [header, ...rows].map((r) => r.map(cell).join(',')).join('\r\n') + '\r\n';
}
