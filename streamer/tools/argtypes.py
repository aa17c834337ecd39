"""argparse ``type`` functions that several commands share; a value they refuse is a usage error that names it."""

from __future__ import annotations

import argparse
from typing import Callable


def whole_number_at_least_one(what: str) -> Callable[[str], int]:
    """An argparse ``type``: a whole number of ``what`` >= 1 (anything else is a usage error naming the value)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            raise argparse.ArgumentTypeError(f"expected a whole number of {what} >= 1, got {text!r}")
        return value

    return parse
