"""What every tool writes with: the line width, numbers, paragraphs, and
input quoted in messages."""
import decimal
import textwrap

__all__ = ["WIDTH", "ECHO_LIMIT", "number", "wrap", "fill", "abbreviate"]

WIDTH = 79          # columns of a report: fits an 80-column terminal
ECHO_LIMIT = 40     # characters of the input a message quotes


def number(value, digits=6):
    """A number as C++'s cout prints it: %g with `digits` significant digits
    (the default is cout's 6); "n/a" for None.

    A Decimal below float64's range (the demo's exact e^-1000) keeps its
    value instead of printing 0."""
    if value is None:
        return "n/a"
    if isinstance(value, decimal.Decimal):
        as_float = float(value)
        if as_float != 0 or value == 0:
            return f"{as_float:.{digits}g}"
        mantissa, exponent = format(value, f".{digits - 1}e").split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent):+03d}"
    return f"{float(value):.{digits}g}"


def wrap(text, width=WIDTH, *, initial_indent="", subsequent_indent="",
         split_words=False):
    """The lines of one paragraph, each at most `width` columns.

    Words stay whole by default, so that a command, a hyphenated name or a
    long number can be copied from the report; split_words=True lets lines
    break after hyphens and inside words longer than a line."""
    return textwrap.wrap(text, width, initial_indent=initial_indent,
                         subsequent_indent=subsequent_indent,
                         break_on_hyphens=split_words,
                         break_long_words=split_words)


def fill(text, width=WIDTH, **options):
    """One paragraph as a string of lines; the options are wrap()'s."""
    return "\n".join(wrap(text, width, **options))


def abbreviate(text, quote=False):
    """`text` as a message quotes it: whole up to ECHO_LIMIT characters,
    else its first ECHO_LIMIT, "..." and its length, so that a pathological
    input is not echoed whole.  quote=True puts the text in repr()'s quotes.
    """
    head = text[:ECHO_LIMIT]
    shown = repr(head) if quote else head
    if len(text) <= ECHO_LIMIT:
        return shown
    return f"{shown}... ({len(text)} characters)"
