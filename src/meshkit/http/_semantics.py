"""What HTTP's methods and statuses mean for a caller deciding whether to try again."""

from __future__ import annotations

__all__ = ["IDEMPOTENT_METHODS", "RETRYABLE_STATUSES"]

# RFC 9110, 9.2.2: sending one of these twice has the effect of sending it once.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})

# RFC 9110, 15.6.3-15.6.5: the answering server (or one behind it) could not
# serve the request just now. Another instance may; these are also the
# answers that count against an instance for ejection.
RETRYABLE_STATUSES = frozenset({502, 503, 504})
