"""Discovery: finding, balancing and ejecting a service's instances, and retrying elsewhere.

One layer under the SDK's client, the gateway and the sidecar, so that all
three follow the same rules: a ``Directory`` of instances kept current by
watching the registry, an ``InstanceSet`` per service (balancing, ejection
capped by a share of the instances, a panic threshold, a retry budget), and
``Attempts``, which decides whether a failed attempt goes to another instance.
"""

from meshkit.discovery._attempts import Attempts
from meshkit.discovery._directory import Directory
from meshkit.discovery._instances import InstanceSet, Pick
from meshkit.discovery._policy import CallPolicy, failed_status, may_retry, unsent

__all__ = [
    "Attempts",
    "CallPolicy",
    "Directory",
    "InstanceSet",
    "Pick",
    "failed_status",
    "may_retry",
    "unsent",
]
