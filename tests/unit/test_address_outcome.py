"""The Twilio channel maps provider error codes to domain outcomes; services never see
Twilio's numbers."""

from __future__ import annotations

import pytest

from dispatcher.channels.twilio_client import address_outcome
from dispatcher.domain import AddressOutcome


@pytest.mark.parametrize(("code", "outcome"), [
    ("30005", AddressOutcome.INVALID),  # unknown handset (a status callback's ErrorCode)
    ("30006", AddressOutcome.INVALID),  # landline or unreachable carrier
    (" 30006 ", AddressOutcome.INVALID),
    (21211, AddressOutcome.INVALID),  # refused when sending: not a valid number
    ("21610", AddressOutcome.CARRIER_OPT_OUT),  # STOP at the carrier
    (21610, AddressOutcome.CARRIER_OPT_OUT),
    ("30003", AddressOutcome.NONE),  # unreachable handset: may work tomorrow
    ("30008", AddressOutcome.NONE),
    ("", AddressOutcome.NONE),
    ("abc", AddressOutcome.NONE),
    (None, AddressOutcome.NONE),
])
def test_error_codes_map_to_address_outcomes(code: str | int | None, outcome: AddressOutcome) -> None:
    assert address_outcome(code) is outcome
