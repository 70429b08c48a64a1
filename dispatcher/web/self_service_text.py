"""The words of the debtor's page, in the two locales the product ships (zh-CN, en-US).

Kept apart from the handlers so that a translator reads one file; the page template
looks every sentence up here (`t.key`), and every value is escaped by Jinja2.
"""

from __future__ import annotations

TEXT: dict[str, dict[str, str]] = {
    "en-US": {
        "title": "Your account",
        "outstanding": "Outstanding now",
        "due_date": "Payment was due",
        "penalty": "How charges are calculated",
        "pay_now": "Pay now",
        "pay_now_hint": "You will go to {org}'s secure payment page.",
        "promise": "Promise to pay by a date",
        "promise_hint": "Pick a date up to {date}. We will not send reminders until then.",
        "promise_button": "Promise to pay",
        "plan": "Pay in instalments",
        "plan_none": "No instalment plan is available for this account. Call us to discuss one.",
        "plan_take": "Accept this plan",
        "plan_read": "Please read the agreement before you accept it.",
        "instalments": "{n} instalments",
        "waiver": "Late charges of {amount} waived if every instalment is paid on time",
        "dispute": "Dispute this debt",
        "dispute_hint": "Tell us what is wrong. A person will review it; reminders stop meanwhile.",
        "dispute_button": "Send",
        "support": "Customer service",
        "closed": "Nothing is outstanding on this account. Thank you.",
        "plan_in_force": "Your repayment plan",
        "plan_next": "Next: {amount} by {date}",
        "plan_paid": "paid",
        "plan_left": "{amount} left",
        "plan_agreement": "View or print your agreement",
        "promise_in_force": "You promised to pay by {date}.",
        "disputed": "Your dispute is being reviewed.",
        "done_promise": "Thank you. Your promise to pay by {date} is recorded.",
        "done_plan": "Your repayment plan is in place. Reminders will come before each instalment.",
        "done_dispute": "Your dispute is recorded. A person will review it.",
        "err_bad_date": "Please enter a date (year-month-day).",
        "err_date_range": "Please pick a date from tomorrow to {date}.",
        "err_closed": "Nothing is outstanding on this account.",
        "err_plan_exists": "A repayment plan is already in place.",
        "err_no_offer": "This plan is not available for your account.",
        "err_terms_changed": "The terms have changed since the page was opened. Please read them again.",
        "err_empty_dispute": "Please write what is wrong.",
        "expired_title": "This link has expired",
        "expired": "For your security, links work for a limited time. Use the link in our latest reminder,"
                   " or call customer service.",
        "invalid_title": "This link is not valid",
        "invalid": "The link may have been cut off when it was copied. Open it from our latest reminder,"
                   " or call customer service.",
        "forbidden_title": "Please try again",
        "forbidden": "Your request could not be checked (the page may have been open too long)."
                     " Please open the page again.",
        "busy_title": "Too many requests",
        "busy": "Please wait a minute and try again.",
        "agreement_title": "Repayment plan agreement",
        "agreement_accepted": "Accepted {at} ({by}). Record {hash}.",
        "agreement_status": "Plan status: {status}",
        "print": "Print",
        "back": "Back",
    },
    "zh-CN": {
        "title": "您的账户",
        "outstanding": "当前尚欠",
        "due_date": "原到期日",
        "penalty": "费用计算说明",
        "pay_now": "立即还款",
        "pay_now_hint": "将前往{org}的安全还款页面。",
        "promise": "承诺还款日期",
        "promise_hint": "可选择{date}之前的日期，在此之前我们不再发送提醒。",
        "promise_button": "提交承诺",
        "plan": "分期还款",
        "plan_none": "此账户暂无可选的分期方案，请致电客服协商。",
        "plan_take": "接受此方案",
        "plan_read": "接受前请阅读协议全文。",
        "instalments": "分{n}期",
        "waiver": "每期按时还清可减免逾期罚息{amount}",
        "dispute": "对欠款有异议",
        "dispute_hint": "请说明情况，工作人员将进行核实，核实期间暂停提醒。",
        "dispute_button": "提交",
        "support": "客服电话",
        "closed": "此账户已无欠款，谢谢。",
        "plan_in_force": "您的分期还款计划",
        "plan_next": "下一期：{date}前还款{amount}",
        "plan_paid": "已还清",
        "plan_left": "尚欠{amount}",
        "plan_agreement": "查看或打印协议",
        "promise_in_force": "您已承诺在{date}前还款。",
        "disputed": "您的异议正在核实中。",
        "done_promise": "谢谢，已记录您在{date}前还款的承诺。",
        "done_plan": "分期还款计划已生效，每期到期前我们会提醒您。",
        "done_dispute": "已记录您的异议，工作人员将进行核实。",
        "err_bad_date": "请输入日期（年-月-日）。",
        "err_date_range": "请选择明天至{date}之间的日期。",
        "err_closed": "此账户已无欠款。",
        "err_plan_exists": "已有生效的分期还款计划。",
        "err_no_offer": "此方案不适用于您的账户。",
        "err_terms_changed": "打开页面后条款已有变化，请重新阅读。",
        "err_empty_dispute": "请填写异议内容。",
        "expired_title": "链接已过期",
        "expired": "为了您的安全，链接有时效。请使用最新提醒中的链接，或致电客服。",
        "invalid_title": "链接无效",
        "invalid": "链接可能复制不完整。请从最新的提醒中打开，或致电客服。",
        "forbidden_title": "请重试",
        "forbidden": "无法核验您的请求（页面可能打开太久），请重新打开页面。",
        "busy_title": "请求过于频繁",
        "busy": "请稍等一分钟后再试。",
        "agreement_title": "分期还款协议",
        "agreement_accepted": "接受时间：{at}（{by}）。记录编号：{hash}。",
        "agreement_status": "计划状态：{status}",
        "print": "打印",
        "back": "返回",
    },
}


class Words:
    """`t.key` in a template: the sentence in the page's locale; `t("key", x=..)` formats it."""

    def __init__(self, locale: str) -> None:
        self._words = TEXT["zh-CN" if locale.lower().startswith("zh") else "en-US"]

    def __getattr__(self, key: str) -> str:
        try:
            return self._words[key]
        except KeyError:
            raise AttributeError(key) from None

    def __call__(self, key: str, **values: object) -> str:
        return self._words[key].format(**values)
