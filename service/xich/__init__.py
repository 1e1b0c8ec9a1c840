"""XICH: XAI-based intra-class hierarchies (audit image classifiers by Grad-CAM dominance)."""

__version__ = "0.1.0"
