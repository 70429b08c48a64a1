"""Time and size limits on rendering templates that staff write in a browser.

Jinja2's sandbox keeps a template away from Python's internals, but not from the
machine's time and memory: `{% for i in range(10**5) %}{% for j in range(10**5) %}`
spins for hours and `{{ 'x' * 10**10 }}` asks for 10 GB (Jinja even folds that constant
while *compiling*). `BoundedSandbox` is the sandbox with Jinja's own hooks used to bound
both:

- `range` gives at most `MAX_RANGE` numbers (Jinja's sandbox allows 100 000);
- the operators `+ * % **` are intercepted (`intercepted_binops`, which also stops
  constant folding) and refuse a string or list longer than `MAX_VALUE_CHARS`, an
  integer over `MAX_INT_BITS` bits, or a `%` format that would be too long;
- every call (`call`), every value written out (`finalize`), every join of output
  (`concat`, `~`) and every loop step (a code generator that wraps `for` iterables)
  checks the size of what it makes and the render's wall-clock deadline;
- the filters and string methods that multiply text (center, indent, join, replace,
  format, wordwrap, batch, slice, sum, ljust, rjust, zfill, expandtabs, str.format)
  are checked before they run, so nothing big is ever built;
- what a render writes is at most `MAX_OUTPUT_CHARS` of its channel.

A limit that is hit raises `TemplateLimitError` (a `SecurityError`), whose message says
what to change. `deadline(seconds)` sets the wall-clock bound of the renders inside it
(`rendering.TemplateSet.render` sets `RENDER_SECONDS` for each message). The deadline is
a time budget of the process, not a business time: it uses `time.monotonic`.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import re
import string
import time
from _string import formatter_field_name_split  # what string.Formatter uses
from collections.abc import Callable, Iterable, Iterator, MappingView
from typing import Any, cast

from jinja2 import nodes, runtime
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context, Namespace
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import Markup

#: The most numbers `range()` gives (a message needs a handful).
MAX_RANGE = 1_000
#: The longest string, list or joined output a template may build on the way (characters).
MAX_VALUE_CHARS = 100_000
#: The largest integer a template may compute, in bits (about 300 decimal digits).
MAX_INT_BITS = 1_024
#: The most characters one render of each channel may write (per e-mail or voice block):
#: Twilio accepts an SMS body of at most 1 600 characters; Gmail clips an e-mail larger
#: than 102 KB; Twilio's `<Say>` takes at most 4 096 characters (basic voices; Polly 3 000).
MAX_OUTPUT_CHARS = {"sms": 1_600, "email": 100_000, "voice": 4_096}
#: The wall-clock time one message's render may take, in seconds (a normal one takes
#: about a millisecond).
RENDER_SECONDS = 1.0

#: Why a template too deeply nested for Python's parser is refused.
TOO_DEEP = ("brackets, operators or tags are nested too deeply to compile; write the text plainly,"
            " with fewer levels of nesting")

#: The most characters one render may write in all (into its output, and into set
#: blocks and macros whose text it may throw away): ten times the largest value.
MAX_WRITTEN_CHARS = 10 * MAX_VALUE_CHARS


@dataclasses.dataclass(slots=True)
class _Budget:
    end: float  # time.monotonic() when the render must stop
    written: int = 0  # characters written by `{{ ... }}` so far


_BUDGET: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("template_budget", default=None)


class TemplateLimitError(SecurityError):
    """A template went over a time or size limit; the message says what to change."""


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Renders inside this block fail with `TemplateLimitError` after `seconds`, or once
    they wrote more than `MAX_WRITTEN_CHARS` in all."""
    token = _BUDGET.set(_Budget(time.monotonic() + seconds))
    try:
        yield
    finally:
        _BUDGET.reset(token)


def check_time() -> None:
    """Raise if the current render is over its deadline."""
    budget = _BUDGET.get()
    if budget is not None and time.monotonic() > budget.end:
        raise TemplateLimitError(
            f"the template took longer than {RENDER_SECONDS:g} s to render; remove long or nested loops"
            f" (a message needs a few lines of text, not thousands of repetitions)")


def _too_long(what: str, size: int, limit: int = MAX_VALUE_CHARS) -> TemplateLimitError:
    return TemplateLimitError(
        f"{what} would be about {size:,} characters; a template may build at most {limit:,} characters"
        " — remove the repetition (string multiplication, padding, loops) that makes it")


def size_of(value: Any, limit: int = MAX_VALUE_CHARS, _depth: int = 0) -> int:
    """About how many characters `value` takes as text (stops counting past `limit`)."""
    if isinstance(value, str | bytes):
        return len(value)
    if isinstance(value, bool) or value is None:
        return 5
    if isinstance(value, int):
        return value.bit_length() * 10 // 33 + 2
    if isinstance(value, Namespace):
        value = dict(value._Namespace__attrs)  # its repr shows them
    if isinstance(value, dict):
        items: Iterable[Any] = (part for pair in value.items() for part in pair)
    elif isinstance(value, list | tuple | set | frozenset | MappingView):  # views print what they show
        items = cast(Iterable[Any], value)
    else:
        return 32
    if _depth > 20:
        raise TemplateLimitError("values are nested more than 20 levels deep; flatten them")
    total = 2
    for item in items:
        total += size_of(item, limit, _depth + 1) + 2
        if total > limit:
            break
    return total


def check_size(value: Any, what: str = "a value", limit: int = MAX_VALUE_CHARS) -> Any:
    """`value`, unless it is bigger than `limit` characters."""
    size = size_of(value, limit)
    if size > limit:
        raise _too_long(what, size, limit)
    return value


def _check_int(value: Any, what: str) -> None:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_VALUE_CHARS:
        raise TemplateLimitError(f"{what} {value:,} is too large; use at most {MAX_VALUE_CHARS:,}")


def bounded_range(*args: int) -> range:
    """`range` with at most `MAX_RANGE` numbers."""
    numbers = range(*args)
    if len(numbers) > MAX_RANGE:
        raise TemplateLimitError(f"range() of {len(numbers):,} numbers; templates may loop over at most"
                                 f" {MAX_RANGE:,}")
    return numbers


# -- formats -------------------------------------------------------------------------

_PRINTF = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?([a-zA-Z%])")
_DIGITS = re.compile(r"\d+")


def _check_printf(fmt: str, args: Any) -> None:
    """Refuse a `%` format whose widths, precisions or repeated arguments make it too long."""
    values = list(args.values()) if isinstance(args, dict) else list(args) if isinstance(args, tuple) else [args]
    widths = 0
    specs = 0
    for match in _PRINTF.finditer(fmt):
        specs += 1
        for group in match.group(1, 2):
            if group == "*":
                for value in values:
                    _check_int(value, "a '*' width or precision of")
            elif group:
                _check_int(int(group), "a width or precision of")
                widths += int(group)
    biggest = max((size_of(v) for v in values), default=0)
    estimate = len(fmt) + widths + specs * biggest
    if estimate > MAX_VALUE_CHARS:
        raise _too_long("the formatted text", estimate)


class _BoundedFormatter(string.Formatter):
    """`str.format` for templates: a field's width or precision and the total are bounded."""

    def __init__(self, env: Any) -> None:
        super().__init__()
        self._env = env
        self._total = 0

    def vformat(self, format_string: str, args: Any, kwargs: Any) -> str:
        self._total = len(format_string)
        return super().vformat(format_string, args, kwargs)

    def get_field(self, field_name: str, args: Any, kwargs: Any) -> Any:
        first, rest = formatter_field_name_split(field_name)
        obj = self.get_value(first, args, kwargs)
        for is_attr, key in rest:
            obj = self._env.getattr(obj, key) if is_attr else self._env.getitem(obj, key)
        return obj, first

    def format_field(self, value: Any, format_spec: str) -> Any:
        for digits in _DIGITS.findall(format_spec):
            _check_int(int(digits), "a width or precision of")
        self._total += size_of(value) + sum(int(d) for d in _DIGITS.findall(format_spec))
        if self._total > MAX_VALUE_CHARS:
            raise _too_long("the formatted text", self._total)
        return super().format_field(value, format_spec)


# -- filters and methods that multiply text ------------------------------------------


def _pre_join(value: Any, sep: str = "", *_: Any) -> None:
    items = list(value) if not isinstance(value, str) else [value]
    estimate = sum(size_of(i) for i in items) + len(str(sep)) * len(items)
    if estimate > MAX_VALUE_CHARS:
        raise _too_long("the joined text", estimate)


def _text(value: Any) -> str:
    """`value` as text of the same length (bytes one character per byte)."""
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)


def _pre_replace(s: Any, old: Any = "", new: Any = "", count: Any = None) -> None:
    s, old, new = _text(s), _text(old), _text(new)
    hits = len(s) + 1 if not old else s.count(old)
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    estimate = len(s) + hits * max(len(new) - len(old), 0)
    if estimate > MAX_VALUE_CHARS:
        raise _too_long("the text after replace", estimate)


def _pre_width(s: Any, width: Any = 0, *_: Any) -> None:
    _check_int(width, "a width of")


def _pre_indent(s: Any, width: Any = 4, *_: Any) -> None:
    s = _text(s)
    pad = len(width) if isinstance(width, str) else width
    _check_int(pad, "an indent of")
    estimate = len(s) + (s.count("\n") + 1) * max(int(pad), 0)
    if estimate > MAX_VALUE_CHARS:
        raise _too_long("the indented text", estimate)


def _pre_wordwrap(s: Any, width: Any = 79, break_long_words: Any = True, wrapstring: Any = None,
                  *_: Any) -> None:
    _check_int(width, "a width of")
    estimate = len(str(s)) * (1 + len(str(wrapstring or "\n")))
    if estimate > 4 * MAX_VALUE_CHARS:
        raise _too_long("the wrapped text", estimate)


def _pre_count(value: Any, count: Any = 1, *_: Any) -> None:
    _check_int(count, "a count of")


def _pre_expandtabs(s: Any, tabsize: Any = 8) -> None:
    _check_int(tabsize, "a tab size of")
    text = _text(s)
    estimate = len(text) + text.count("\t") * max(int(tabsize), 0)
    if estimate > MAX_VALUE_CHARS:
        raise _too_long("the text with tabs expanded", estimate)


def _pre_translate(s: Any, table: Any = None, *_: Any) -> None:
    values = table.values() if isinstance(table, dict) else table if isinstance(table, list | tuple) else ()
    longest = max((size_of(v) for v in values if isinstance(v, str)), default=1)
    estimate = len(str(s)) * max(longest, 1)
    if estimate > MAX_VALUE_CHARS:
        raise _too_long("the translated text", estimate)


def _pre_urlize(value: Any, trim_url_limit: Any = None, nofollow: Any = False, target: Any = None,
                rel: Any = None, *_: Any) -> None:
    text = str(value)
    extra = 40 + len(str(target or "")) + len(str(rel or ""))
    estimate = 2 * len(text) + (text.count(" ") + 1) * extra  # each word might become a link
    if estimate > MAX_VALUE_CHARS and (target or rel):
        raise _too_long("the text with links", estimate)


def _pre_sum(value: Any, *args: Any, **kwargs: Any) -> None:
    check_size(list(value), "the sum")


#: Filters checked before they run, by name (the value is always size-checked too).
_FILTER_CHECKS: dict[str, Callable[..., None]] = {
    "center": _pre_width, "indent": _pre_indent, "join": _pre_join, "replace": _pre_replace,
    "wordwrap": _pre_wordwrap, "batch": _pre_count, "slice": _pre_count, "sum": _pre_sum,
    "format": lambda value, *args, **kwargs: _check_printf(str(value), kwargs or args),
    "truncate": _pre_width, "urlize": _pre_urlize,
}
#: `str` methods checked before they run (the string is the first argument).
_METHOD_CHECKS: dict[str, Callable[..., None]] = {
    "center": _pre_width, "ljust": _pre_width, "rjust": _pre_width, "zfill": _pre_width,
    "expandtabs": _pre_expandtabs, "replace": _pre_replace, "translate": _pre_translate,
    "join": lambda sep, value: _pre_join(value, sep),
}


#: Filters whose input is measured item by item (a generator is made a list first).
_MATERIALIZE = frozenset({"join", "sum"})


#: Keyword arguments Jinja adds to calls made inside loops and blocks (for macros).
_JINJA_KWARGS = frozenset({"_loop_vars", "_block_vars"})


def _guard_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    check = _FILTER_CHECKS.get(name)
    pass_arg = getattr(func, "jinja_pass_arg", None)

    @functools.wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        check_time()
        first = 1 if pass_arg is not None else 0  # context/environment first
        if name in _MATERIALIZE and len(args) > first and not isinstance(args[first], str | list | tuple | dict):
            args = (*args[:first], list(args[first]), *args[first + 1:])  # checked, then used
        own = args[first:]
        if own:
            check_size(own[0], f"the input of the {name} filter")
            if check is not None:
                check(*own, **kwargs)
        return check_size(func(*args, **kwargs), f"the result of the {name} filter")

    return guarded


def _bounded_lipsum(lipsum: Callable[..., str]) -> Callable[..., str]:
    """Jinja's filler-text global, refusing more than `MAX_VALUE_CHARS` of it."""

    @functools.wraps(lipsum)
    def bounded(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:  # Jinja's parameter names
        for value in (n, min, max):
            _check_int(value, "a lipsum() count of")
        estimate = n * max * 12  # words of at most 11 letters and a space
        if estimate > MAX_VALUE_CHARS:
            raise _too_long("the filler text", estimate)
        return lipsum(n, html, min, max)

    return bounded


def _guarded_iter(iterable: Any) -> Iterator[Any]:
    """A `for` loop's items, checking the deadline at every step."""
    for item in iterable:
        check_time()
        yield item


def _guarded_join(parts: Iterable[Any], join: Callable[[list[Any]], str], limit: int, what: str) -> str:
    total = 0
    items = []
    for n, part in enumerate(parts):
        if n % 64 == 0:
            check_time()
        total += size_of(part)
        if total > limit:
            raise _too_long(what, total, limit)
        items.append(part)
    return join(items)


def _str_join(parts: Iterable[Any]) -> str:
    """Jinja's `~` (without autoescape), refusing a result over `MAX_VALUE_CHARS`."""
    return _guarded_join(parts, runtime.str_join, MAX_VALUE_CHARS, "the joined text")


def _markup_join(parts: Iterable[Any]) -> str:
    """Jinja's `~` with autoescape (escaping can make the text longer: measured again)."""
    def join(items: list[Any]) -> str:
        return check_size(runtime.markup_join(items), "the joined text")
    return _guarded_join(parts, join, MAX_VALUE_CHARS, "the joined text")


def _concat(parts: Iterable[Any]) -> str:
    return _guarded_join(parts, "".join, MAX_VALUE_CHARS, "the text of a block, macro or set")


class _BoundedCodeGenerator(CodeGenerator):
    """Jinja's code generator, with `for` loops stepping through `_guarded_iter` and `~`
    joining through the environment's bounded joins."""

    def visit_For(self, node: nodes.For, frame: Frame) -> None:
        guarded = nodes.Call(nodes.EnvironmentAttribute("guarded_iter"), [node.iter], [], None, None,
                             lineno=node.lineno)
        wrapped = nodes.For(node.target, guarded, node.body, node.else_, node.test, node.recursive,
                            lineno=node.lineno)
        super().visit_For(wrapped, frame)

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        if frame.eval_ctx.volatile:
            func = "(environment.markup_join if context.eval_ctx.volatile else environment.str_join)"
        elif frame.eval_ctx.autoescape:
            func = "environment.markup_join"
        else:
            func = "environment.str_join"
        self.write(f"{func}((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox with time and size limits (see the module docstring)."""

    code_generator_class = _BoundedCodeGenerator
    intercepted_binops = frozenset({"+", "*", "%", "**"})

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(finalize=self._finalize, **kwargs)
        self.globals["range"] = bounded_range
        self.globals["lipsum"] = _bounded_lipsum(cast(Callable[..., str], self.globals["lipsum"]))
        self.filters = {name: _guard_filter(name, f) for name, f in self.filters.items()}
        self.guarded_iter = _guarded_iter
        self.str_join = _str_join
        self.markup_join = _markup_join

    concat = staticmethod(_concat)

    @staticmethod
    def _finalize(value: Any) -> Any:
        check_time()
        size = size_of(value)
        if size > MAX_VALUE_CHARS:
            raise _too_long("a value written out", size)
        budget = _BUDGET.get()
        if budget is not None:
            budget.written += size
            if budget.written > MAX_WRITTEN_CHARS:
                raise _too_long("what the template writes in all (blocks, macros and sets included)",
                                budget.written, MAX_WRITTEN_CHARS)
        return value

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        check_time()
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(times, int) and isinstance(seq, str | bytes | list | tuple):
                    estimate = size_of(seq) * max(times, 0)
                    if estimate > MAX_VALUE_CHARS:
                        raise _too_long("the repeated text or list", estimate)
            if isinstance(left, int) and isinstance(right, int) and \
                    left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise TemplateLimitError(f"the product is larger than {MAX_INT_BITS} bits; use smaller numbers")
        elif operator == "**":
            if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1 and \
                    (left.bit_length() - 1) * right > MAX_INT_BITS:
                raise TemplateLimitError(f"{left} ** {right} is larger than {MAX_INT_BITS} bits; use a smaller"
                                         " power")
        elif operator == "%" and isinstance(left, str | bytes):
            _check_printf(_text(left), right)
        elif operator == "+" and not isinstance(left, int | float):
            estimate = size_of(left) + size_of(right)
            if estimate > MAX_VALUE_CHARS:
                raise _too_long("the sum of texts or lists", estimate)
        return check_size(super().call_binop(context, operator, left, right), "the result")

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        check_time()
        target = getattr(__obj, "__wrapped__", __obj)
        owner = getattr(target, "__self__", None)
        if isinstance(owner, str | bytes):
            method = getattr(target, "__name__", "")
            if method == "join" and args and not isinstance(args[0], str | list | tuple | dict):
                args = (list(args[0]), *args[1:])  # checked, then used
            check = _METHOD_CHECKS.get(method)
            if check is not None:  # without the variables Jinja passes along for macros
                check(owner, *args, **{k: v for k, v in kwargs.items() if k not in _JINJA_KWARGS})
        return check_size(super().call(__context, __obj, *args, **kwargs), "the result of a call")

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        f_self: str = value.__self__
        formatter = _BoundedFormatter(self)
        is_map = value.__name__ == "format_map"

        def bounded(*args: Any, **kwargs: Any) -> str:
            if is_map:
                if kwargs or len(args) != 1:
                    raise TypeError("format_map() takes exactly one mapping")
                fields_args, fields_kwargs = (), args[0]
            else:
                fields_args, fields_kwargs = args, kwargs
            out = formatter.vformat(f_self, fields_args, fields_kwargs)
            if isinstance(f_self, Markup):  # measured above; Jinja's own formatter escapes the fields
                return wrapped(*args, **kwargs)
            return out

        return functools.update_wrapper(bounded, value)


def render_bounded(parts: Iterable[str], channel: str) -> str:
    """Join a render's output as it streams, refusing more than the channel's
    `MAX_OUTPUT_CHARS` and checking the deadline."""
    limit = MAX_OUTPUT_CHARS[channel]
    total = 0
    out = []
    for part in parts:
        check_time()
        total += len(part)
        if total > limit:
            raise TemplateLimitError(
                f"the {channel} text is longer than {limit:,} characters, the most one message may have;"
                " shorten it (remove repetitions and loops)")
        out.append(part)
    return "".join(out)
