import importlib

import pytest

import meshkit

# The public surface, by namespace. Adding or removing a name is a decision:
# change it here on purpose.
PUBLIC = {
    "meshkit": [
        "CallPolicy",
        "Clock",
        "MeshkitError",
        "Service",
        "ServiceClient",
        "SystemClock",
        "__version__",
    ],
    "meshkit.testing": ["FakeClock"],
    "meshkit.bus": [
        "INBOX_RETENTION",
        "MAX_AGE",
        "OutboxEntry",
        "OutboxRelay",
        "OutboxStore",
        "ParkedEntry",
        "RelayStatistics",
        "SqliteInbox",
        "SqliteOutbox",
        "MAX_HEADERS",
        "MAX_PAYLOAD",
        "REPLAY_HEADER",
        "Bus",
        "Consumer",
        "DeadLetter",
        "Delivery",
        "EmbeddedBus",
        "GroupInfo",
        "Handler",
        "Message",
        "Outgoing",
        "Published",
        "RemoteBus",
        "Subscription",
        "SubscriptionStatistics",
        "check_group",
        "check_headers",
        "check_message_id",
        "check_topic",
        "encode_payload",
        "open_bus",
        "outgoing",
        "subscribe",
    ],
    "meshkit.gateway": [
        "READY_PATH",
        "AccessLog",
        "AdminConfig",
        "ApiKey",
        "CorsConfig",
        "Gateway",
        "GatewayConfig",
        "GlobalLimit",
        "JwtConfig",
        "RedisConfig",
        "RouteConfig",
    ],
    "meshkit.ratelimit": ["LimitStore", "MemoryLimitStore"],
    "meshkit.sidecar": [
        "METRICS_PATH",
        "READY_PATH",
        "EventRoute",
        "HealthGate",
        "Sidecar",
        "SidecarConfig",
        "Span",
    ],
    "meshkit.proxy": [
        "HOP_BY_HOP",
        "PROXY_LIMITS",
        "Exchange",
        "Filter",
        "Forwarder",
        "Forwarding",
        "ProxyLimits",
        "ProxyRequest",
        "ProxyResponse",
        "ProxyServer",
        "RequestDecision",
        "Retrier",
        "error_response",
        "request_headers",
        "response_headers",
    ],
    "meshkit.service": [
        "TIMEOUT_HEADER",
        "CallPolicy",
        "Directory",
        "Service",
        "ServiceClient",
        "current_deadline",
        "without_deadline",
    ],
    "meshkit.http": [
        "IDEMPOTENT_METHODS",
        "HTTPClient",
        "HTTPServer",
        "Limits",
        "Request",
        "Response",
        "ServerLimits",
        "Timeouts",
        "json_response",
    ],
    "meshkit.policy": [
        "GCRA",
        "BackendsChanged",
        "BadPath",
        "Backoff",
        "Balancer",
        "BreakerConfig",
        "BreakerState",
        "BreakerStateChanged",
        "BreakerStatistics",
        "CircuitBreaker",
        "DeadlineBudget",
        "Hook",
        "Lease",
        "LeaseEvent",
        "LeaseEventKind",
        "LeaseTable",
        "NoRoute",
        "PolicyEvent",
        "PowerOfTwoChoices",
        "RateDecision",
        "RateLimit",
        "Redelivery",
        "RateLimitStateChanged",
        "RetryBudget",
        "RetryBudgetStateChanged",
        "RetryBudgetStatistics",
        "RetryDecision",
        "RetryPolicy",
        "RetryRun",
        "RetryScheduled",
        "RetryStopped",
        "RoundRobin",
        "Route",
        "RouteMatch",
        "RouteTable",
        "SmoothWeightedRoundRobin",
        "StopReason",
        "TokenBucket",
        "WeightedSplit",
        "sticky_points",
    ],
}


@pytest.mark.parametrize("module_name", sorted(PUBLIC))
def test_public_names(module_name: str) -> None:
    """Each public namespace exports exactly the agreed names, and they exist."""
    module = importlib.import_module(module_name)
    assert sorted(module.__all__) == sorted(PUBLIC[module_name])
    for name in module.__all__:
        assert hasattr(module, name), name


def test_version_matches_the_package_metadata() -> None:
    """__version__ is the installed distribution's version."""
    from importlib.metadata import version

    assert meshkit.__version__ == version("meshkit")
