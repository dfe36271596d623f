"""How the release prepared, ran and scored each method for the paper's Tables 2 and 3 (facts only).

One :class:`ReleasePreset` per method, read from the release's evaluation code (file and line of each
fact in ``sources`` and in ``docs/release_presets.md``). The array work lives in
:mod:`spinseg.recipes.release_inputs`; :func:`preset` looks one up by name.

Orientation: the Keras baselines and KiU-Net read the ATLAS volumes through ``generate_h5.py``, which
transposes each (197, 233, 189) volume to (189, 233, 197): their slices are our (H, W) slices
transposed, (233, 197), and every crop below is written in that transposed frame as the release wrote it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from spinseg.constants import ATLAS_MEAN, ATLAS_STD

# Intensity preparations (implemented in spinseg.recipes.release_inputs).
ZSCORE = "zscore"  # (T1 - mean) / std with the ATLAS statistics, SPiN's and the in-house U-Net's
DIVIDE_BY_100 = "divide_by_100"  # T1 / 100, the h5 export of the Keras baselines
DUNET_UINT8 = "dunet_uint8"  # uint8(T1 * 2.55), crop, Lanczos resize, per-patient min-max to [0, 1]
KIUNET_SLICE_UINT8 = "kiunet_slice_uint8"  # per-slice (x - min) / max * 255 as uint8 of T1 / 100, nearest resize, / 255

# How Table 3 (small-lesion slices) was aggregated.
POOLED = "pooled"  # voxel counts of every small-lesion slice of every subject, each metric once (SPiN, U-Net)
SUBJECT_MEAN = "subject_mean"  # each subject's small-lesion-slice metrics, averaged over subjects (baselines)


@dataclass(frozen=True)
class ReleasePreset:
    """One method's input preparation, scoring grid and thresholding as the release evaluated it."""

    name: str  # registry model name
    display_name: str
    intensity: str
    n_slices: int  # input channels: adjacent axial slices
    centred_slices: bool  # True: slices i-(n-1)/2 .. i+(n-1)/2; False (D-UNet): i-2 .. i+1
    slice_fill: str  # what stands in for slices beyond the volume: "dataset_mean" or "zeros"
    transposed: bool  # the release's (2, 1, 0) transpose: model sees our (H, W) slice transposed
    crop_rows: tuple[int, int] | None = None  # crop of the (transposed) slice, as [start, stop)
    crop_columns: tuple[int, int] | None = None
    resize: tuple[int, int] | None = None  # (height, width) after the crop
    resample: str = ""  # PIL filter of the resize: "lanczos" or "nearest"
    threshold: float = 0.5
    threshold_inclusive: bool = True  # probability >= threshold is lesion (every release script)
    scored_on: str = ""  # the grid the release scored predictions on, in words
    small_lesion_aggregation: str = POOLED
    release_checkpoint: str = ""  # the authors' file under pretrained_models/
    model_config: dict = field(default_factory=dict)
    sources: dict = field(default_factory=dict)  # fact -> "release file:line"

    def input_shape(self, slice_shape: tuple[int, int]) -> tuple[int, int]:
        """(height, width) the model sees for an ATLAS slice of ``slice_shape`` (our H, W)."""
        height, width = slice_shape[::-1] if self.transposed else slice_shape
        if self.crop_rows:
            height = self.crop_rows[1] - self.crop_rows[0]
        if self.crop_columns:
            width = self.crop_columns[1] - self.crop_columns[0]
        return self.resize or (height, width)


PRESETS: dict[str, ReleasePreset] = {
    "spin": ReleasePreset(
        "spin", "SPiN", ZSCORE, 5, True, "dataset_mean", False, scored_on="197 x 233, the volume as stored",
        release_checkpoint="spin/spin_atlas_traintest.pth",
        sources={
            "normalisation": "bash/spin/evaluate/evaluate_spin_traintest.sh (--dataset_means 30.20063 --dataset_stddevs 35.221165)",
            "slices": "bash/spin/evaluate/evaluate_spin_traintest.sh (--n_chunk 5)",
            "threshold": "src/eval_utils.py:600-603 (sigmoid < 0.5 -> 0, else 1)",
            "table 3": "src/eval_utils.py:1268-1275 (small-lesion slices stacked, each metric once)",
        },
    ),
    "unet": ReleasePreset(
        "unet", "U-Net", ZSCORE, 1, True, "dataset_mean", False, scored_on="197 x 233, the volume as stored",
        release_checkpoint="u-net/unet_atlas_traintest.pth",
        sources={
            "normalisation": "bash/u-net/evaluate/evaluate_unet_traintest.sh (standard, 30.20063 / 35.221165)",
            "slices": "bash/u-net/evaluate/evaluate_unet_traintest.sh (--n_chunk 1)",
            "encoder": "bash/u-net/evaluate/evaluate_unet_traintest.sh (vggnet13, 64 128 256 512 1024)",
            "threshold": "src/eval_utils.py:600-603 (sigmoid < 0.5 -> 0, else 1)",
            "table 3": "src/eval_utils.py:1268-1275 (pooled)",
        },
    ),
    "xnet": ReleasePreset(
        "xnet", "X-Net", DIVIDE_BY_100, 1, True, "zeros", True, crop_rows=(5, 229), crop_columns=(2, 194),
        scored_on="224 x 192: the same crop of the transposed ground truth",
        small_lesion_aggregation=SUBJECT_MEAN, release_checkpoint="x-net/xnet_atlas_traintest.h5",
        sources={
            "T1 / 100, transpose (2, 1, 0)": "external_src/generate_h5/generate_h5.py:100-101",
            "crop [5:229, 2:194]": "external_src/X-Net/data.py:63",
            "ground-truth crop": "external_src/X-Net/run_val_prediction_Xnet.py:274-276",
            "threshold >= 0.5": "external_src/X-Net/run_val_prediction_Xnet.py:262-263",
            "table 3 per subject, averaged": "external_src/X-Net/run_val_prediction_Xnet.py:300, 358",
        },
    ),
    "clcinet": ReleasePreset(
        "clcinet", "CLCI-Net", DIVIDE_BY_100, 1, True, "zeros", True, crop_rows=(5, 229), crop_columns=(11, 187),
        scored_on="224 x 176: the same crop of the transposed ground truth",
        small_lesion_aggregation=SUBJECT_MEAN, release_checkpoint="clci-net/clcinet_atlas_traintest.h5",
        sources={
            "T1 / 100, transpose (2, 1, 0)": "external_src/generate_h5/generate_h5.py:100-101",
            "crop [5:229, 11:187]": "external_src/CLCI-Net/data.py:63",
            "ground-truth crop": "external_src/CLCI-Net/run_val_prediction_CLCI.py:271",
            "threshold >= 0.5": "external_src/CLCI-Net/run_val_prediction_CLCI.py:257-258",
            "table 3 per subject, averaged": "external_src/CLCI-Net/run_val_prediction_CLCI.py:295, 352",
        },
    ),
    "dunet": ReleasePreset(
        "dunet", "D-UNet", DUNET_UINT8, 4, False, "zeros", True, crop_rows=(40, 220), crop_columns=(10, 190),
        resize=(192, 192), resample="lanczos",
        scored_on="192 x 192: the ground truth cropped and Lanczos-resized like the input",
        small_lesion_aggregation=SUBJECT_MEAN, release_checkpoint="dunet/dunet_atlas_traintest.hdf5",
        sources={
            "transpose (2, 1, 0), raw T1": "external_src/DUnet/eval.py:343-346",
            "uint8(T1 * 2.55)": "external_src/DUnet/eval.py:362",
            "PIL crop (10, 40, 190, 220), resize 192 x 192 ANTIALIAS": "external_src/DUnet/eval.py:367-368",
            "ground truth: same crop and resize": "external_src/DUnet/eval.py:371-372",
            "per-patient min-max": "external_src/DUnet/eval.py:380-381",
            "4 slices, channel j = slice i + j - 2, zeros outside": "external_src/DUnet/data_load.py:216-225; eval.py:388",
            "threshold >= 0.5": "external_src/DUnet/eval.py:410-411",
            "table 3 per subject, averaged": "external_src/DUnet/eval.py:428, 492",
        },
    ),
    "kiunet": ReleasePreset(
        "kiunet", "KiU-Net", KIUNET_SLICE_UINT8, 1, True, "zeros", True, resize=(128, 128), resample="nearest",
        scored_on="128 x 128: the ground truth resized NEAREST like the input",
        small_lesion_aggregation=SUBJECT_MEAN, release_checkpoint="kiu-net/kiunet_atlas_traintest.pth",
        sources={
            "T1 / 100, transpose (2, 1, 0)": "external_src/generate_h5/generate_h5.py:100-101",
            "per-slice (x - min) / max * 255 as uint8": "external_src/KiU-Net/process_data.py:124",
            "resize 128 x 128 NEAREST": "external_src/KiU-Net/process_data.py:135",
            "read back / 255 (to_tensor)": "external_src/KiU-Net/utils.py:92",
            "softmax channel 1 >= 0.5": "external_src/KiU-Net/test.py:344; run_val_predictions_KiUnet.py:65-66",
            "ground truth NEAREST to 128 x 128": "external_src/KiU-Net/run_val_predictions_KiUnet.py:81-90",
            "table 3": "not in the release (neither KiU-Net script computes it); scored as the other baselines",
        },
    ),
}

# The statistics SPiN's and U-Net's release evaluation normalises with.
ZSCORE_STATISTICS = {"mean": ATLAS_MEAN, "std": ATLAS_STD}


def preset(name: str) -> ReleasePreset:
    """The release preset of method ``name`` (a registry name); one-line error for an unknown one."""
    from spinseg.errors import UserInputError

    if name not in PRESETS:
        raise UserInputError(f"--preset: unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]
