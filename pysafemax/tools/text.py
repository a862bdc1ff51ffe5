"""What every tool writes with: the line width, numbers, paragraphs, and
input quoted in messages."""
from __future__ import annotations

import decimal
import textwrap
from typing import Any, List, Optional, SupportsFloat, Union

__all__ = ["WIDTH", "ECHO_LIMIT", "number", "wrap", "fill", "abbreviate"]

WIDTH = 79          # columns of a report: fits an 80-column terminal
ECHO_LIMIT = 40     # characters of the input a message quotes


def number(value: Optional[Union[SupportsFloat, decimal.Decimal]],
           digits: int = 6) -> str:
    """A number as C++'s cout prints it: %g with `digits` significant digits
    (the default is cout's 6).

    A Decimal below float64's range (the demo's exact e^-1000) keeps its
    value instead of printing 0.

    Parameters
    ----------
    value : real number, decimal.Decimal or None
        The number.
    digits : int, default 6
        Significant digits.

    Returns
    -------
    str
        The number printed; "n/a" for None.

    Examples
    --------
    >>> from decimal import Decimal
    >>> from pysafemax.tools.text import number
    >>> number(87.33654785), number(None), number(Decimal("5.076e-435"))
    ('87.3365', 'n/a', '5.076e-435')
    """
    if value is None:
        return "n/a"
    if isinstance(value, decimal.Decimal):
        as_float = float(value)
        if as_float != 0 or value == 0:
            return f"{as_float:.{digits}g}"
        mantissa, exponent = format(value, f".{digits - 1}e").split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent):+03d}"
    return f"{float(value):.{digits}g}"


def wrap(text: str, width: int = WIDTH, *, initial_indent: str = "",
         subsequent_indent: str = "", split_words: bool = False) -> List[str]:
    """The lines of one paragraph, each at most `width` columns.

    Parameters
    ----------
    text : str
        The paragraph.
    width : int, default WIDTH
        Columns per line.
    initial_indent, subsequent_indent : str
        Put before the first line, and before every other line.
    split_words : bool, default False
        Words stay whole by default, so that a command, a hyphenated name or
        a long number can be copied from the report; True lets lines break
        after hyphens and inside words longer than a line.

    Returns
    -------
    list of str
        The lines, without newlines.
    """
    return textwrap.wrap(text, width, initial_indent=initial_indent,
                         subsequent_indent=subsequent_indent,
                         break_on_hyphens=split_words,
                         break_long_words=split_words)


def fill(text: str, width: int = WIDTH, **options: Any) -> str:
    """One paragraph as a string of lines.

    Parameters
    ----------
    text : str
        The paragraph.
    width : int, default WIDTH
        Columns per line.
    **options
        wrap()'s keyword options.

    Returns
    -------
    str
        wrap()'s lines joined by newlines.
    """
    return "\n".join(wrap(text, width, **options))


def abbreviate(text: str, quote: bool = False) -> str:
    """`text` as a message quotes it, so that a pathological input is not
    echoed whole.

    Parameters
    ----------
    text : str
        The input.
    quote : bool, default False
        Put the text in repr()'s quotes.

    Returns
    -------
    str
        The text whole up to ECHO_LIMIT characters, else its first
        ECHO_LIMIT, "..." and its length.

    Examples
    --------
    >>> from pysafemax.tools.text import abbreviate
    >>> abbreviate("87.3365", quote=True)
    "'87.3365'"
    >>> abbreviate("9" * 50)
    '9999999999999999999999999999999999999999... (50 characters)'
    """
    head = text[:ECHO_LIMIT]
    shown = repr(head) if quote else head
    if len(text) <= ECHO_LIMIT:
        return shown
    return f"{shown}... ({len(text)} characters)"
