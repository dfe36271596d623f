"""SPiN: small lesion segmentation with subpixel embedding (Wong et al., MICCAI BrainLes 2021)."""

__version__ = "0.1.0"
