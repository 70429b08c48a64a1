"""What lint holds a voice template to: the words that disclose a debt (never in the
identity check or the voicemail) and the keypad options the script must announce.
Data and two small helpers, used by `templates.lint`."""

from __future__ import annotations

import re

#: Words that disclose a debt. A voicemail may be heard by anyone and the identity
#: check is spoken before we know who answered: neither may use them.
DEBT_WORDS_EN = (
    "debt", "debts", "owe", "owed", "owes", "owing", "overdue", "past due", "late", "balance",
    "payment", "payments", "pay", "paid", "repay", "repayment", "collect", "collection",
    "collections", "collector", "delinquent", "delinquency", "arrears", "loan", "loans",
    "credit card", "penalty", "penalties", "interest", "amount due", "outstanding", "bill",
    "billing",
)
DEBT_WORDS_ZH = (
    "欠",
    "债",
    "逾期",
    "还款",
    "催收",
    "贷款",
    "罚息",
    "利息",
    "账单",
    "信用卡",
    "应还",
    "金额",
    "付款",
    "缴费",
)
DEBT_RE = re.compile(
    r"\b(?:" + "|".join(re.escape(w).replace(r"\ ", r"\s+") for w in DEBT_WORDS_EN) + r")\b"
    + "|" + "|".join(map(re.escape, DEBT_WORDS_ZH)),
    re.IGNORECASE,
)

#: IVR options the script must announce; the gather handler maps these digits.
VOICE_OPTIONS = {"1": "payment link by SMS", "2": "promise to pay", "3": "an agent",
                  "4": "self-service link by SMS", "9": "stop calls"}


def press(locale: str, digit: str) -> re.Pattern[str]:
    """How the script asks for `digit` in `locale` ("press 1", "按1")."""
    if locale.startswith("zh"):
        return re.compile(rf"按\s*{digit}(?!\d)")
    return re.compile(rf"\bpress\s+{digit}(?!\d)", re.IGNORECASE)
