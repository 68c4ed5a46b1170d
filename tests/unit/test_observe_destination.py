"""Where telemetry goes: the control plane by default, or where OTEL_EXPORTER_OTLP_* says."""

import pytest

from meshkit.errors import ConfigError
from meshkit.observe import Destination, Endpoint, Identity, destination, standard_variables

TOKEN = "t" * 32


def test_the_control_plane_by_default_with_the_token() -> None:
    found = destination(control="http://127.0.0.1:7700/", token=TOKEN, variables={})
    auth = (("authorization", f"Bearer {TOKEN}"),)
    assert found == Destination(
        traces=Endpoint("http://127.0.0.1:7700/v1/traces", auth),
        logs=Endpoint("http://127.0.0.1:7700/v1/logs", auth),
    )


@pytest.mark.parametrize("control", [None, "etcd://127.0.0.1:2379"])
def test_nowhere_without_a_control_plane(control: str | None) -> None:
    assert destination(control=control, token=TOKEN, variables={}) == Destination()


def test_the_standard_variables_send_to_a_collector_instead() -> None:
    found = destination(
        control="http://127.0.0.1:7700",
        token=TOKEN,
        variables={
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/",
            "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "https://logs.example/ingest",
            "OTEL_EXPORTER_OTLP_HEADERS": "api-key=a%20b, X-Team=shop",
            "OTEL_EXPORTER_OTLP_LOGS_HEADERS": "api-key=logs",
        },
    )
    assert found.to_collector
    assert found.traces == Endpoint(
        "http://collector:4318/v1/traces", (("api-key", "a b"), ("x-team", "shop"))
    )
    assert found.logs == Endpoint(
        "https://logs.example/ingest", (("api-key", "logs"), ("x-team", "shop"))
    )


def test_one_signal_alone_leaves_the_other_unsent() -> None:
    found = destination(
        control="http://127.0.0.1:7700",
        token=TOKEN,
        variables={"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"},
    )
    assert found.traces == Endpoint("http://c:4318/v1/traces")
    assert found.logs is None


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
                "OTEL_EXPORTER_OTLP_HEADERS": "novalue",
            },
            "OTEL_EXPORTER_OTLP_HEADERS",
        ),
    ],
)
def test_bad_variables_are_refused_naming_them(variables: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        destination(control=None, token=None, variables=variables)


def test_the_identity_is_the_resource_without_empty_values() -> None:
    assert Identity(service="orders", instance="orders-1").resource() == {
        "service.name": "orders",
        "service.instance.id": "orders-1",
    }


def test_a_child_in_any_language_is_given_the_standard_variables() -> None:
    where = destination(control="http://127.0.0.1:7700", token=TOKEN, variables={})
    identity = Identity(service="notifications", instance="notifications-1", version="2")
    assert standard_variables(identity, where) == {
        "OTEL_SERVICE_NAME": "notifications",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:7700",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_RESOURCE_ATTRIBUTES": "service.instance.id=notifications-1,service.version=2",
        "OTEL_EXPORTER_OTLP_HEADERS": f"authorization=Bearer%20{TOKEN}",
    }


def test_a_users_collector_is_left_to_the_inherited_variables() -> None:
    where = destination(
        control="http://127.0.0.1:7700",
        token=TOKEN,
        variables={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"},
    )
    assert standard_variables(Identity(service="n"), where) == {}


def test_grpc_is_refused_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"OTEL_EXPORTER_OTLP_PROTOCOL.*4318"):
        destination(
            control=None,
            token=None,
            variables={
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            },
        )
