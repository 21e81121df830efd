"""dermsearch: reverse image search for dermoscopic images."""

import os as _os

# OpenMP threads that spin after each parallel region steal the CPU from the Python work between
# matrix products (fast-mode queries were much slower with spinning threads; exact search and
# inference unaffected: the figures are in docs/performance.md). Set before torch is imported;
# an explicit OMP_WAIT_POLICY in the environment wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
