"""moegs: a Mixture of Experts of dynamic 3D Gaussian Splatting models (MoE-GS)."""

from moegs.openmp_waiting import wait_passively_by_default

# before anything loads torch (and its libgomp): the `moegs` command spins briefly instead
wait_passively_by_default()

__version__ = "0.3.0"
