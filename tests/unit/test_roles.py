"""Roles, permissions and names (SPEC 14): pure rules."""

from __future__ import annotations

import pytest

from dispatcher.credentials import light_passwords, new_api_token, token_digest
from dispatcher.roles import (
    ROLE_PERMISSIONS,
    InvalidName,
    Permission,
    Principal,
    Role,
    bootstrap_principal,
    name_key,
    normalise_name,
    parse_roles,
    release_permission,
)


def test_the_permission_table_of_spec_14() -> None:
    def can(role: Role) -> set[str]:
        return {p.value for p in ROLE_PERMISSIONS[role]}

    assert can(Role.COLLECTOR) == {"cases.read", "cases.write", "holds.place", "holds.release", "tasks.work",
                                   "contacts.reveal"}  # only collectors may see a full number
    assert can(Role.AUTHOR) == {"templates.read", "templates.draft"}
    assert can(Role.COMPLIANCE) == {"cases.read", "templates.read", "metrics.read", "reports.read",
                                    "templates.approve", "holds.place", "holds.release", "holds.release_protected"}
    assert can(Role.ADMIN) == {"users.manage"}
    assert can(Role.OPS) == {"cases.read", "templates.read", "metrics.read", "reports.read"}


def test_legal_and_cease_communication_holds_are_released_by_compliance_only() -> None:
    collector = Principal("agent7", frozenset({Role.COLLECTOR}), 1)
    compliance = Principal("合规张", frozenset({Role.COMPLIANCE}), 2)
    for reason in ("legal_hold", "cease_communication"):
        assert release_permission(reason) is Permission.HOLDS_RELEASE_PROTECTED
        assert not collector.can(release_permission(reason)) and compliance.can(release_permission(reason))
    for reason in ("collector_hold", "payment_claimed", "promise_to_pay", "dispute_hold"):
        assert release_permission(reason) is Permission.HOLDS_RELEASE
        assert collector.can(release_permission(reason))


def test_roles_add_up_and_the_bootstrap_credential_cannot_approve() -> None:
    both = Principal("li", frozenset({Role.AUTHOR, Role.OPS}), 1)
    assert both.can(Permission.TEMPLATES_DRAFT) and both.can(Permission.METRICS_READ)
    assert not both.can(Permission.CASES_WRITE)
    assert not Principal("nobody", frozenset(), 2).permissions
    boot = bootstrap_principal()
    assert boot.name == "bootstrap" and boot.can(Permission.CASES_WRITE) and boot.can(Permission.USERS_MANAGE)
    assert not boot.can(Permission.TEMPLATES_APPROVE)  # four eyes are two people
    # a user who happens to be called like the bootstrap cannot exist, and would not inherit it
    assert not Principal("bootstrap", frozenset({Role.OPS}), 3).can(Permission.CASES_WRITE)


@pytest.mark.parametrize("raw, stored", [
    ("王小明", "王小明"),
    ("  Zoe\u0308   Ng ", "Zoë Ng"),  # NFC, spaces collapsed
    ("o'brien-smith.jr@ops", "o'brien-smith.jr@ops"),
    ("محمد", "محمد"),
    ("Дмитрий", "Дмитрий"),
])
def test_names_in_any_script(raw: str, stored: str) -> None:
    assert normalise_name(raw) == stored


@pytest.mark.parametrize("raw, message", [
    ("", "empty"), ("   ", "empty"), ("a" * 65, "at most 64"), ("x<script>", "may not contain '<'"),
    ("zero\u200bwidth", "may not contain"), ("null\x00", "may not contain"), ("BOOTSTRAP", "reserved"),
    ("System", "reserved"),
])
def test_unusable_names_say_why(raw: str, message: str) -> None:
    with pytest.raises(InvalidName, match=message):
        normalise_name(raw)


def test_one_person_per_name_whatever_its_form() -> None:
    assert name_key("ZOË") == name_key("zoe\u0308") == name_key("Zoë")
    assert name_key("王小明") != name_key("王小名")


def test_roles_are_parsed_with_a_clear_error() -> None:
    assert parse_roles(["Collector", "ops", "ops"]) == {Role.COLLECTOR, Role.OPS}
    with pytest.raises(ValueError, match="unknown role 'boss': use collector, author, compliance, admin, ops"):
        parse_roles(["boss"])
    with pytest.raises(ValueError, match="at least one --role"):
        parse_roles([])


def test_passwords_and_tokens() -> None:
    passwords = light_passwords()
    stored = passwords.hash("correct horse battery")
    assert stored.startswith("$argon2id$")
    assert passwords.verify(stored, "correct horse battery")
    assert not passwords.verify(stored, "correct horse batterY")
    assert not passwords.verify(None, "correct horse battery")  # no user: the dummy is checked, never a match
    assert not passwords.verify("not a hash", "x")
    a, b = new_api_token(), new_api_token()
    assert a != b and a.startswith("dsp_") and len(a) >= 46
    assert token_digest(a) != token_digest(b) and len(token_digest(a)) == 64
