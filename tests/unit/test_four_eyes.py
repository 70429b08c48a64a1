"""The four-eyes rule (`services.template_versions.four_eyes_refusal`), the one predicate
the service's refusal and the studio's buttons share."""

from __future__ import annotations

from dispatcher.roles import Principal, Role, bootstrap_principal
from dispatcher.services.template_versions import four_eyes_refusal


def person(name: str, *roles: Role) -> Principal:
    return Principal(name, frozenset(roles), 1)


def test_only_someone_else_with_the_compliance_role_may_decide() -> None:
    assert four_eyes_refusal("alice", person("carol", Role.COMPLIANCE)) is None
    assert four_eyes_refusal("alice", person("carol", Role.COMPLIANCE, Role.AUTHOR)) is None
    # the author, however the name is written, even with the compliance role
    assert four_eyes_refusal("Alice", person("alice", Role.COMPLIANCE)) == "same_author"
    assert four_eyes_refusal("王  小明", person("王 小明", Role.COMPLIANCE, Role.AUTHOR)) == "same_author"
    assert four_eyes_refusal("alice", person("alice", Role.AUTHOR)) == "same_author"
    for role in (Role.AUTHOR, Role.COLLECTOR, Role.ADMIN, Role.OPS):
        assert four_eyes_refusal("alice", person("bob", role)) == "not_compliance"
    assert four_eyes_refusal("alice", bootstrap_principal()) == "not_compliance"  # nobody in particular
