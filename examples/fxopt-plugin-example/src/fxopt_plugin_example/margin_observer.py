"""``example.absmax_margin``: min/max calibration with a safety margin around the range.

Widening the observed range by ``margin`` trades a little resolution for headroom on inputs
slightly larger than anything seen in calibration. torchao is imported when a recipe asks
for this observer, not when the plugin loads.
"""

from __future__ import annotations

import functools

MARGIN = 1.1


@functools.cache
def _observer_class():
    from torchao.quantization.pt2e.observer import MinMaxObserver

    class AbsMaxMarginObserver(MinMaxObserver):
        """Records ``margin`` × each batch's range; passes the input through unchanged."""

        def forward(self, x_orig):
            super().forward(x_orig.detach() * MARGIN)
            return x_orig

    return AbsMaxMarginObserver


def absmax_margin(options):
    """The observer factory ``quantize.int8`` calls with the recipe's observer options."""
    return _observer_class()
