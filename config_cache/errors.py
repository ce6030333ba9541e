"""The one exception type for configuration mistakes."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration mistake found at load time.

    ``str()`` names the file, the tenant and the field path (for example
    ``users.100.password``) when they are known, then the message::

        tenants.yaml: tenant 'acme': users.100.password: must be a non-empty string

    Attributes:
        message: what is wrong, without the location.
        file: the file (or other source, such as a LevelDB path or
            ``mongodb:tenants``) the value came from, when known.
        tenant: the tenant id, when known.
        field: dotted path of the offending field inside the tenant document.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        tenant: str | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.tenant = tenant
        self.field = field
        super().__init__(self.__str__())

    def __str__(self) -> str:
        parts: list[str] = []
        if self.file is not None:
            parts.append(self.file)
        if self.tenant is not None:
            parts.append(f"tenant {self.tenant!r}")
        if self.field is not None:
            parts.append(self.field)
        parts.append(self.message)
        return ": ".join(parts)

    def with_location(self, *, file: str | None = None, tenant: str | None = None) -> ConfigError:
        """Return a copy that also names ``file``/``tenant`` where this one did not."""
        return ConfigError(
            self.message,
            file=self.file if self.file is not None else file,
            tenant=self.tenant if self.tenant is not None else tenant,
            field=self.field,
        )


class UpstreamError(Exception):
    """The master Configuration DB or the History DB could not be used
    (unreachable, timed out, refused the command). The node keeps working
    from its local store and retries."""
