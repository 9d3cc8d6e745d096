"""nnU-Net v2 pieces shared by tests/external: ``plans.json`` contents for hand-built model folders (no nnunetv2
needed) and nnU-Net's own predictor on the CPU (the reference the agreement tests compare with; needs nnunetv2).

``PLAIN_ARCH`` is a tiny PlainConvUNet (3 stages, 4-8-16 features); ``plans_json`` wraps an architecture in the
plans of one ``3d_fullres`` configuration with CT normalisation.
"""

from __future__ import annotations

PLAIN_ARCH = {
    "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "arch_kwargs": {
        "n_stages": 3,
        "features_per_stage": [4, 8, 16],
        "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [[3, 3, 3]] * 3,
        "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
        "n_conv_per_stage": [2, 2, 2],
        "n_conv_per_stage_decoder": [2, 2],
        "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    },
    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
}

#: foreground intensities of channel 0 (CT normalisation reads them), as nnU-Net's planner writes them
FOREGROUND = {
    "max": 400.0,
    "mean": 60.0,
    "median": 55.0,
    "min": -100.0,
    "percentile_00_5": -50.0,
    "percentile_99_5": 300.0,
    "std": 40.0,
}


def plans_json(
    arch=PLAIN_ARCH,
    *,
    spacing: float = 2.0,
    patch=(16, 16, 16),
    median_shape=(16, 16, 16),
    data_identifier: str = "x",
    dataset_name: str = "Dataset900_T",
    foreground: dict | None = None,
    top: dict | None = None,
    **conf_extra,
) -> dict:
    """The plans of one ``3d_fullres`` configuration: ``conf_extra`` adds or replaces keys of the configuration,
    ``top`` of the plans themselves; ``foreground`` replaces some of the ``FOREGROUND`` intensities."""
    conf = {
        "data_identifier": data_identifier,
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2,
        "patch_size": list(patch),
        "median_image_size_in_voxels": list(median_shape),
        "spacing": [spacing] * 3,
        "normalization_schemes": ["CTNormalization"],
        "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "architecture": arch,
        "batch_dice": False,
        **conf_extra,
    }
    return {
        "dataset_name": dataset_name,
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [spacing] * 3,
        **(top or {}),
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {"3d_fullres": conf},
        "foreground_intensity_properties_per_channel": {"0": {**FOREGROUND, **(foreground or {})}},
    }


def reference_predictor(*, tile_step_size: float = 0.5, use_mirroring: bool = True):
    """nnU-Net's own ``nnUNetPredictor`` on the CPU, quiet (Gaussian weighting on); initialise it yourself."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    return nnUNetPredictor(
        tile_step_size=tile_step_size,
        use_gaussian=True,
        use_mirroring=use_mirroring,
        perform_everything_on_device=False,
        device=torch.device("cpu"),
        verbose=False,
        verbose_preprocessing=False,
        allow_tqdm=False,
    )
