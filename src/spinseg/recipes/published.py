"""The paper's published Tables 2 and 3 (ATLAS R1.2 traintest split), as data.

Source: the authors' repository README (github.com/alexklwong/subpixel-embedding-segmentation, "The
checkpoint should produce numbers consistent with Table 2 / Table 3 from our main paper"). Rows are
keyed by registry model name, in the paper's row order.
"""
from __future__ import annotations

PAPER_ROW_ORDER = ("unet", "dunet", "clcinet", "kiunet", "xnet", "spin")

# Table 2: per-subject 3-D metrics averaged over the 27 test subjects.
PAPER_TABLE2 = {
    "unet": {"dice": 0.584, "iou": 0.432, "precision": 0.674, "recall": 0.558},
    "dunet": {"dice": 0.548, "iou": 0.404, "precision": 0.652, "recall": 0.521},
    "clcinet": {"dice": 0.599, "iou": 0.469, "precision": 0.741, "recall": 0.536},
    "kiunet": {"dice": 0.524, "iou": 0.387, "precision": 0.703, "recall": 0.459},
    "xnet": {"dice": 0.639, "iou": 0.495, "precision": 0.746, "recall": 0.588},
    "spin": {"dice": 0.703, "iou": 0.556, "precision": 0.806, "recall": 0.654},
}

# Table 3: the small-lesion slices (every 8-connected lesion <= 100 pixels).
PAPER_TABLE3 = {
    "unet": {"dice": 0.368, "iou": 0.225, "precision": 0.440, "recall": 0.316},
    "dunet": {"dice": 0.265, "iou": 0.180, "precision": 0.377, "recall": 0.264},
    "clcinet": {"dice": 0.246, "iou": 0.178, "precision": 0.662, "recall": 0.215},
    "kiunet": {"dice": 0.246, "iou": 0.255, "precision": 0.466, "recall": 0.206},
    "xnet": {"dice": 0.306, "iou": 0.213, "precision": 0.546, "recall": 0.268},
    "spin": {"dice": 0.424, "iou": 0.269, "precision": 0.546, "recall": 0.347},
}
