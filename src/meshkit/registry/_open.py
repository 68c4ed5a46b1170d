"""Choose a registry backend by URL."""

from __future__ import annotations

from meshkit.errors import ConfigError
from meshkit.registry._protocol import Registry
from meshkit.registry._remote import RemoteRegistry

__all__ = ["open_registry"]


def open_registry(url: str, *, token: str | None = None) -> Registry:
    """``http://host:port`` is a control plane (needs ``token``); ``etcd://host:port`` is etcd."""
    if url.startswith("http://"):
        if not token:
            raise ConfigError("token", f"the control plane at {url} needs a token (MESHKIT_TOKEN)")
        return RemoteRegistry(url, token=token)
    if url.startswith("etcd://"):
        from meshkit.registry.etcd import EtcdRegistry  # lazily: etcd is an extra

        return EtcdRegistry(url)
    raise ConfigError("registry", f"must be http://host:port or etcd://host:port, got {url!r}")
