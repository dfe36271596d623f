"""Facts of the data sets and the paper that several modules share."""

# ATLAS R1.2: T1 volumes in MNI space, 1 mm isotropic, sliced along the last (axial) axis.
ATLAS_SHAPE = (197, 233, 189)
# Normalisation used by the paper for ATLAS ("standard" normalisation: (x - mean) / std).
ATLAS_MEAN = 30.20063
ATLAS_STD = 35.221165

# The paper's small-lesion subset: an axial slice qualifies when it holds at least one lesion
# and every 8-connected lesion in it has at most this many pixels.
SMALL_LESION_MAX_PIXELS = 100

# File name patterns of the ATLAS R1.2 release (after setup the extension becomes .npy).
ATLAS_T1_SUFFIX = "_t1w_stx"
ATLAS_T1_DEFACED_SUFFIX = "_t1w_deface_stx"
ATLAS_MASK_SUFFIX = "_LesionSmooth_stx"

# Lesion-size bins of the size analysis, as upper edges in voxels (1 mm^3 each on ATLAS): <=100,
# 101-1,000, 1,001-10,000 and >10,000 voxels. Shared by the evaluator and predict's lesion report.
DEFAULT_SIZE_BINS = (100, 1000, 10000)
