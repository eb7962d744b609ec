"""errors.one_line: the one way an error message becomes one line for the user."""

from __future__ import annotations

from asyncrl.errors import one_line

WORKER = ("generator 0 failed:\nTraceback (most recent call last):\n  File \"x.py\", line 3, in f\n    g()\n"
          "ZeroDivisionError: division by zero\n")


def test_all_lines_joined_with_whitespace_collapsed():
    assert one_line(ValueError("bad  value\n\n   in row 3 ")) == "bad value in row 3"


def test_a_carried_traceback_shrinks_to_its_head_and_last_line():
    assert one_line(WORKER) == ("generator 0 failed: ZeroDivisionError: division by zero "
                                "(rerun with --debug for the traceback)")


def test_first_and_last_line():
    e = OSError("cannot load weights\nlong explanation\nRay: the actor died because its node was lost")
    assert one_line(e, "first") == "cannot load weights"
    assert one_line(e, "last") == "Ray: the actor died because its node was lost"


def test_limit_and_type():
    assert one_line(KeyError("x" * 300), limit=20, typed=True) == "KeyError: '" + "x" * 16 + "..."
    assert one_line(RuntimeError(), typed=True) == "RuntimeError"
    assert one_line(RuntimeError()) == "RuntimeError"  # an exception never becomes an empty message
    assert one_line("") == ""
