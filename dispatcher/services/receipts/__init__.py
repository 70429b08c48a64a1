"""What comes back: delivery receipts, inbound SMS, keypresses, clicks, unsubscribes and
bounces, applied to the store (SPEC section 6). The web layer verifies and parses the
requests; this package decides nothing itself (the rules are in `policy.replies`) and
only writes: every change appends an event.

The modules, along their seams:

- `hot_path`: the status SQL, PostgreSQL's connection pool, SQLite's group commit;
- `status`: status callbacks and what follows them (orphans, address outcomes);
- `ivr`: the call's answer, keypresses and menu options;
- `inbound`: inbound SMS (keywords and free text);
- `email`: one-click unsubscribes, bounces and payment-link clicks;
- `promises`: releasing expired promises to pay;
- `replies`: the automatic SMS replies, rendered from approved templates;
- `service`: the `Receipts` facade the web layer holds.

Concurrency, because providers deliver callbacks late, twice and in parallel: a status
moves only up the rank order, in one conditional update, so racing callbacks cannot
regress it and a duplicate changes nothing; a step that must happen once (an inbound
SMS, an IVR promise, ...) claims its key in `dedupe_keys` in the transaction of its
effects (`store.dedupe`).
"""

from dispatcher.services.receipts.email import BounceOutcome
from dispatcher.services.receipts.inbound import InboundOutcome
from dispatcher.services.receipts.ivr import CallContext
from dispatcher.services.receipts.promises import resume_broken_promises
from dispatcher.services.receipts.service import Receipts
from dispatcher.services.receipts.status import StatusOutcome
from dispatcher.store.events import EventKind

#: Event kind of an inbound SMS that was a keyword (free text is `reply_received`).
KEYWORD_RECEIVED = EventKind.KEYWORD_RECEIVED.value

__all__ = [
    "KEYWORD_RECEIVED",
    "BounceOutcome",
    "CallContext",
    "InboundOutcome",
    "Receipts",
    "StatusOutcome",
    "resume_broken_promises",
]
