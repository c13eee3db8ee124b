"""moegs: a Mixture of Experts of dynamic 3D Gaussian Splatting models (MoE-GS)."""

import os

# torch's OpenMP workers spin while idle and starve numba's rasteriser threads on small machines
# (a 2-core test run went from 6 s to 95 s under load); passive waiting must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.3.0"
