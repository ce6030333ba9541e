"""What may be dialled out through a trunk: number validation and the toll-fraud policy.

Every number that leaves through a trunk (an outbound route, an IVR transfer to an
external number, a ring group's external member) passes :meth:`DialPolicy.check`
before a B-channel is seized. Sans-IO and pure: a number in, a verdict out.

- The number must be a dial string a carrier can take: ``+`` then digits, or digits,
  at most ``max_digits`` of them. Anything else (``*#abc``, an escaped ``@`` or ``;``
  or CR LF that would rewrite the gateway's Request-URI, 300 digits) is refused with
  484 Address Incomplete, Q.850 cause 28 (invalid number format; RFC 3398).
- ``deny`` prefixes are always refused, ``allow`` prefixes always pass (allow wins over
  the categories below, deny wins over allow).
- International numbers (``00``, ``011``, or ``+`` followed by a country code other than
  ``home_country``) and premium numbers (``premium_prefixes``: NANP 1-900/1-976, 0900,
  the international networks +881/+882/+883 that fraud rings favour) are refused unless
  ``allow_international`` / ``allow_premium``: 403, Q.850 cause 21 (call rejected).

A tenant may override any field (tenant document ``dial_policy``); the node's policy
comes from the trunk configuration (``dial_policy`` beside ``outbound_routes``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Final, NamedTuple

__all__ = ["DEFAULT_PREMIUM", "POLICY_FIELDS", "DialPolicy", "Verdict"]

#: Premium-rate and shared-cost destinations refused by default. Prefixes are matched on
#: the number as dialled on the trunk; each international-network prefix is listed in
#: its ``+``, ``00`` and ``011`` forms.
DEFAULT_PREMIUM: Final = (
    "1900",
    "1976",
    "0900",
    "0909",
    *(p + cc for cc in ("881", "882", "883") for p in ("+", "00", "011")),
)

#: The international prefixes recognised in dialled numbers (besides ``+``).
INTERNATIONAL_PREFIXES: Final = ("00", "011")

POLICY_FIELDS: Final = (
    "allow_international",
    "allow_premium",
    "home_country",
    "premium_prefixes",
    "allow",
    "deny",
    "max_digits",
)


class Verdict(NamedTuple):
    """Why a number may not be dialled: the SIP status, the Q.850 cause, a metric label."""

    status: int
    cause: int
    reason: str


_INVALID: Final = Verdict(484, 28, "invalid_number")
_DENIED: Final = Verdict(403, 21, "denied")
_INTERNATIONAL: Final = Verdict(403, 21, "international")
_PREMIUM: Final = Verdict(403, 21, "premium")

_DIGITS: Final = frozenset("0123456789")


@dataclass(frozen=True, slots=True)
class DialPolicy:
    """The rules for numbers leaving through trunks (see the module docstring)."""

    allow_international: bool = False
    allow_premium: bool = False
    home_country: str = ""
    premium_prefixes: tuple[str, ...] = DEFAULT_PREMIUM
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    max_digits: int = 18

    def check(self, number: str) -> Verdict | None:
        """``None`` when ``number`` may be dialled, else why not."""
        digits = number[1:] if number.startswith("+") else number
        if not digits or len(digits) > self.max_digits or not _DIGITS.issuperset(digits):
            return _INVALID
        if _starts(number, self.deny):
            return _DENIED
        if _starts(number, self.allow):
            return None
        if not self.allow_premium and _starts(number, self.premium_prefixes):
            return _PREMIUM
        if not self.allow_international and self.is_international(number):
            return _INTERNATIONAL
        return None

    def is_international(self, number: str) -> bool:
        """True for ``00``/``011`` numbers and ``+`` numbers outside ``home_country``."""
        if number.startswith("+"):
            return not (self.home_country and number[1:].startswith(self.home_country))
        return number.startswith(INTERNATIONAL_PREFIXES)

    def override(self, fields: Mapping[str, Any]) -> DialPolicy:
        """This policy with a tenant's (already validated) fields replacing the node's."""
        if not fields:
            return self
        values: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()
        }
        return replace(self, **values)


def _starts(number: str, prefixes: tuple[str, ...]) -> bool:
    return bool(prefixes) and number.startswith(prefixes)
