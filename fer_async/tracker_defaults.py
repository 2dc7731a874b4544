"""How much a face track smooths its scores and holds its label, by default (fer_async.tracker applies them).

Standard library only: the settings (`--smoothing-ms`, `--label-margin`) read them without
importing numpy.
"""

from __future__ import annotations

# Chosen by measurement on the real clips with `python -m fer_async.replay --sweep` (see the
# README). 150 ms was the least smoothing that removed every label blip there; 250 ms leaves
# room for footage not seen, and with the margin shows a smile 0.23 s (YuNet) after its onset,
# inside the 0.5 s target.
DEFAULT_SMOOTHING_MS = 250.0
DEFAULT_SWITCH_MARGIN = 0.15
