"""Templates: sandboxed rendering, context building, lint, approval and preview.

See SPEC section 7 and the template authors' section of the README.
"""

from dispatcher.templates.approval import ApprovalRefused, approve
from dispatcher.templates.approvals_file import Approval, ApprovalError, load_approvals
from dispatcher.templates.context import (
    build_context,
    format_money,
    opt_out_text,
    penalty_explanation,
)
from dispatcher.templates.lint import LintProblem, lint_path, lint_template, lint_tree
from dispatcher.templates.preview import PreviewResult, preview, sample_case_for_template
from dispatcher.templates.rendering import (
    NotApproved,
    RenderedMessage,
    RenderError,
    TemplateSet,
    TemplateSetError,
    UnknownTemplate,
    pick_locale,
)
from dispatcher.templates.segments import SegmentInfo, sms_segments

__all__ = [
    "Approval",
    "ApprovalError",
    "ApprovalRefused",
    "LintProblem",
    "NotApproved",
    "PreviewResult",
    "RenderError",
    "RenderedMessage",
    "SegmentInfo",
    "TemplateSet",
    "TemplateSetError",
    "UnknownTemplate",
    "approve",
    "build_context",
    "format_money",
    "lint_path",
    "lint_template",
    "lint_tree",
    "load_approvals",
    "opt_out_text",
    "penalty_explanation",
    "pick_locale",
    "preview",
    "sample_case_for_template",
    "sms_segments",
]
