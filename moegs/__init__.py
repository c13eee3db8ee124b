"""moegs: a Mixture of Experts of dynamic 3D Gaussian Splatting models (MoE-GS)."""

__version__ = "0.1.0"
