import pickle
import re

import pytest

import meshkit.errors as errors
from meshkit.errors import ConfigError, DeadlineExceededError, LeaseNotFoundError, MeshkitError


def _drawn_tree() -> dict[str, str | None]:
    """Class name -> parent name, read from the tree drawn in the module docstring."""
    assert errors.__doc__ is not None
    parents: dict[str, str | None] = {}
    stack: list[tuple[int, str]] = []
    for line in errors.__doc__.splitlines():
        match = re.match(r"^(\s*(?:[│ ]   )*(?:[├└]── )?)([A-Z]\w+Error)\b", line)
        if match is None:
            continue
        depth = len(match.group(1))
        while stack and stack[-1][0] >= depth:
            stack.pop()
        parents[match.group(2)] = stack[-1][1] if stack else None
        stack.append((depth, match.group(2)))
    return parents


def test_docstring_tree_matches_the_classes() -> None:
    """The tree drawn in meshkit.errors is exactly the class hierarchy."""
    drawn = _drawn_tree()
    actual: dict[str, str | None] = {}
    for name in errors.__all__:
        cls = getattr(errors, name)
        meshkit_bases = [b.__name__ for b in cls.__bases__ if issubclass(b, MeshkitError)]
        actual[name] = meshkit_bases[0] if meshkit_bases else None
    assert drawn == actual


def test_every_error_is_a_meshkit_error() -> None:
    """Catching MeshkitError catches everything meshkit raises."""
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), MeshkitError)


def test_stdlib_bases_for_existing_handlers() -> None:
    """Errors that mean a stdlib failure also are that stdlib type."""
    assert issubclass(ConfigError, ValueError)
    assert issubclass(DeadlineExceededError, TimeoutError)
    assert issubclass(LeaseNotFoundError, LookupError)


@pytest.mark.parametrize("name", errors.__all__)
def test_every_error_survives_pickling(name: str) -> None:
    """Errors cross process boundaries intact (pools, multiprocessing logging)."""
    cls = getattr(errors, name)
    if issubclass(cls, errors.InvalidArgumentError):
        error = cls("gateway.port", "must be between 1 and 65535")
    elif issubclass(cls, errors.LeaseError):
        error = cls(7, "expired")
    elif issubclass(cls, errors.ServiceUnavailableError):
        error = cls("orders", "no instances registered")
    elif issubclass(cls, errors.RequestRefusedError):
        error = cls(413, "body over 1048576 bytes")
    elif issubclass(cls, errors.CompositionError):
        error = cls("user", "users answered 503")
    else:
        error = cls("something went wrong")
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 (our own bytes, just made)
    assert type(copy) is cls
    assert str(copy) == str(error)
    assert vars(copy) == vars(error)


def test_config_error_names_the_key() -> None:
    """A ConfigError's message starts with the key it is about."""
    error = ConfigError("gateway.port", "must be between 1 and 65535, got 0")
    assert str(error) == "gateway.port: must be between 1 and 65535, got 0"
    assert error.key == "gateway.port"
    with pytest.raises(ValueError, match=r"gateway\.port"):
        raise error


def test_each_branch_says_whose_fault_it_is() -> None:
    """A refused message and a bad argument are the caller's; a lost group is the environment's."""
    assert issubclass(errors.ConfigError, errors.InvalidArgumentError)
    assert issubclass(errors.MessageRefusedError, errors.InvalidArgumentError)
    assert not issubclass(errors.MessageRefusedError, errors.ConfigError)
    assert issubclass(errors.InvalidArgumentError, errors.UsageError)
    assert issubclass(errors.GroupLostError, errors.EnvironmentFaultError)
    assert not issubclass(errors.GroupLostError, errors.UsageError | errors.NotFoundError)


def test_an_invalid_argument_names_its_key() -> None:
    """Every InvalidArgumentError, ConfigError or not, carries the key and the problem apart."""
    error = errors.MessageRefusedError("payload", "is 2000000 bytes, more than 983040")
    assert (error.key, error.problem) == ("payload", "is 2000000 bytes, more than 983040")
    assert str(error) == "payload: is 2000000 bytes, more than 983040"
