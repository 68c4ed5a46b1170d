"""The API gateway: the proxy engine with routes, API keys, rate limits and discovery."""

from meshkit.gateway._config import (
    AdminConfig,
    ApiKey,
    GatewayConfig,
    GlobalLimit,
    RedisConfig,
    RouteConfig,
    TracingConfig,
)
from meshkit.gateway._cors import CorsConfig
from meshkit.gateway._filters import READY_PATH
from meshkit.gateway._gateway import AccessLog, Gateway
from meshkit.gateway._jwt import JwtConfig

__all__ = [
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
    "TracingConfig",
]
