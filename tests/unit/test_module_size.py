"""Each module of the package stays small enough to hold one concern (at most 600 lines)."""

from __future__ import annotations

from pathlib import Path

import dispatcher

LIMIT = 600


def test_no_module_over_the_limit() -> None:
    root = Path(dispatcher.__file__).parent
    sizes = {
        path.relative_to(root).as_posix(): len(path.read_text(encoding="utf-8").splitlines())
        for path in root.rglob("*.py")
    }
    assert sizes, "no modules found"
    too_long = {name: n for name, n in sizes.items() if n > LIMIT}
    assert not too_long, f"split these modules along their seams (limit {LIMIT} lines): {too_long}"
