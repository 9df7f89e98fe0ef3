"""schemathesis hooks of the contract run (scripts/contract).

A request's Idempotency-Key makes a repeat of it get the first answer again (24 hours, per
user; see the README): that is the point of the header, but a generator that draws "0" as the
key of many requests turns them into replays of one another, whose first answer may name a
resource that a later step deleted. No schema can say that, so every valid key that the
fuzzing and stateful phases generate is made unique; an invalid one is sent as generated, to be
refused. (The coverage phase sends its few keys as they are: a key met again with another
request is refused with 422, which scripts/schemathesis.toml expects.)
"""

import re
import uuid

import schemathesis

# What the server accepts, as the document's pattern says (1-255 printable ASCII characters,
# no space at either end since HTTP strips them).
VALID_KEY = re.compile(r"[!-~](?:[ -~]{0,253}[!-~])?")


@schemathesis.hook
def map_headers(context, headers):
    if not headers:
        return headers
    headers = dict(headers)
    for name, value in headers.items():
        if name.lower() == "idempotency-key" and isinstance(value, str) and VALID_KEY.fullmatch(value):
            headers[name] = f"{value[:200]}-{uuid.uuid4().hex}"
    return headers
