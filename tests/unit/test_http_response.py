"""The client's ``Response``, read by meshkit's names and by httpx's."""

import pytest

from meshkit.errors import ProtocolViolationError
from meshkit.http import Response


@pytest.mark.parametrize(
    ("status", "success"), [(200, True), (204, True), (299, True), (199, False), (302, False)]
)
def test_status_code_and_is_success_are_status_and_ok(status: int, success: bool) -> None:
    """``status_code`` and ``is_success`` say what ``status`` and ``ok`` say."""
    answer = Response(status, [], b"")
    assert (
        (answer.status_code, answer.is_success) == (answer.status, answer.ok) == (status, success)
    )


def test_json_decodes_the_body_or_names_the_problem() -> None:
    """``json()`` decodes a JSON body and raises ProtocolViolationError for anything else."""
    assert Response(200, [], b'{"id": 7}').json() == {"id": 7}
    with pytest.raises(ProtocolViolationError, match="not JSON"):
        Response(200, [], b"<html>").json()


@pytest.mark.parametrize(
    ("content_type", "body", "text"),
    [
        (None, "café".encode(), "café"),
        (b"text/plain; charset=utf-8", "café".encode(), "café"),
        (b'text/plain; charset="ISO-8859-1"', "café".encode("latin-1"), "café"),
        (b"text/plain; charset=no-such-charset", "café".encode(), "café"),
        (b"text/plain", b"caf\xff", "caf\ufffd"),
    ],
)
def test_text_decodes_by_the_declared_charset(
    content_type: bytes | None, body: bytes, text: str
) -> None:
    """``text`` follows the charset parameter, defaults to UTF-8, and never fails to decode."""
    headers = [] if content_type is None else [(b"content-type", content_type)]
    assert Response(200, headers, body).text == text
