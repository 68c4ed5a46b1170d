"""JWT authentication for gateway routes with ``auth = "jwt"``.

    [gateway.jwt]
    algorithms = ["HS256"]          # or ["RS256"]
    secret_env = "SHOP_JWT_SECRET"  # HS256: the shared secret, from this variable
    jwks_file = "keys/jwks.json"    # RS256: public keys, relative to the project
    issuer = "https://auth.shop.test"   # optional: checked when set
    audience = "shop-api"               # optional: checked when set

The token comes as ``Authorization: Bearer <token>`` (RFC 6750). It must be
signed with an allowed algorithm (never ``none``), unexpired (30 s of
leeway for clock skew, as is common), and carry a subject; its subject is
the client the rate limits count. Failures answer 401 with a
``WWW-Authenticate: Bearer`` challenge naming the problem.

Verification is PyJWT's (the ``jwt`` extra): signatures and claim checks
are exactly what a well-kept library should do, not this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import msgspec

from meshkit import _env
from meshkit.errors import ConfigError
from meshkit.proxy import ProxyRequest, ProxyResponse, RequestOnly, error_response

__all__ = ["JwtAuth", "JwtConfig"]


class JwtConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    algorithms: list[Literal["HS256", "RS256"]] = msgspec.field(default_factory=lambda: ["HS256"])
    secret_env: str | None = None
    jwks_file: str | None = None
    issuer: str | None = None
    audience: str | None = None
    leeway: float = 30.0
    rate: float = 20.0  # per subject
    burst: int = 40

    def __post_init__(self) -> None:
        if not 0 <= self.leeway <= 3600:
            raise ConfigError(
                "gateway.jwt.leeway", f"must be between 0 and 3600 seconds, got {self.leeway}"
            )
        if not self.algorithms:
            raise ConfigError("gateway.jwt.algorithms", "name at least one of HS256, RS256")
        if "HS256" in self.algorithms and not self.secret_env:
            raise ConfigError("gateway.jwt.secret_env", "HS256 needs the secret's variable")
        if "RS256" in self.algorithms and not self.jwks_file:
            raise ConfigError("gateway.jwt.jwks_file", "RS256 needs a JWKS file of public keys")


def _jwt() -> Any:
    try:
        import jwt
    except ImportError:  # pragma: no cover - depends on the installation
        raise ConfigError(
            "gateway.jwt", "JWT needs the jwt extra: pip install 'meshkit[jwt]'"
        ) from None
    return jwt


class JwtAuth(RequestOnly):
    """Checks ``Authorization: Bearer`` on routes that say ``auth = "jwt"``."""

    def __init__(self, config: JwtConfig, project_dir: Path) -> None:
        self._jwt = _jwt()
        self._config = config
        self._secret: bytes | None = None
        self._keys: dict[str | None, Any] = {}
        if "HS256" in config.algorithms:
            assert config.secret_env is not None  # checked by JwtConfig
            secret = _env.secret(config.secret_env)
            if not secret or len(secret) < 32:
                raise ConfigError(
                    "gateway.jwt.secret_env",
                    f"${config.secret_env} must hold a secret of 32 characters or more",
                )
            self._secret = secret.encode()
        if "RS256" in config.algorithms:
            assert config.jwks_file is not None
            self._keys = self._load_jwks(project_dir / config.jwks_file)

    def _load_jwks(self, path: Path) -> dict[str | None, Any]:
        try:
            keys = self._jwt.PyJWKSet.from_json(path.read_text()).keys
        except OSError as error:
            raise ConfigError("gateway.jwt.jwks_file", f"cannot read {path}: {error}") from error
        except self._jwt.PyJWTError as error:
            raise ConfigError("gateway.jwt.jwks_file", f"{path}: {error}") from error
        by_id: dict[str | None, Any] = {key.key_id: key.key for key in keys}
        if len(keys) == 1:
            by_id[None] = keys[0].key  # a token without "kid" may use the only key
        return by_id

    def on_request(self, request: ProxyRequest) -> ProxyResponse | None:
        if request.policy.auth != "jwt":
            return None
        value = request.header(b"authorization")
        if value is None or value[:7].lower() != b"bearer ":
            return self._refuse(request, None, "a bearer token is required")
        token = value[7:].strip().decode("latin-1")
        try:
            claims = self._decode(token)
        except self._jwt.ExpiredSignatureError:
            return self._refuse(request, "invalid_token", "the token has expired")
        except self._jwt.PyJWTError as error:
            return self._refuse(request, "invalid_token", f"the token is not valid: {error}")
        request.identity = f"jwt:{claims['sub']}"
        return None

    def _decode(self, token: str) -> dict[str, Any]:
        jwt = self._jwt
        header = jwt.get_unverified_header(token)
        algorithm = header.get("alg")
        if algorithm not in self._config.algorithms:
            raise jwt.InvalidAlgorithmError(f"{algorithm!r} is not accepted here")
        if algorithm == "HS256":
            key: Any = self._secret
        else:
            kid = header.get("kid")
            key = self._keys.get(kid)
            if key is None:
                raise jwt.InvalidKeyError(f"no key with id {kid!r} in the JWKS file")
        config = self._config
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=[algorithm],
            issuer=config.issuer,
            audience=config.audience,
            leeway=config.leeway,
            options={"require": ["exp", "sub"], "verify_aud": config.audience is not None},
        )
        return claims

    @staticmethod
    def _refuse(request: ProxyRequest, code: str | None, message: str) -> ProxyResponse:
        challenge = b'Bearer realm="meshkit"'
        if code is not None:
            challenge += b', error="%s"' % code.encode("ascii")
        return error_response(
            401, message, request.request_id, headers=[(b"www-authenticate", challenge)]
        )
