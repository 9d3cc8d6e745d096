"""Sliding-window class scores with MONAI's inferer underneath, plus the speed switches.

MONAI's ``sliding_window_inference`` cuts the windows, batches them and blends
them (Gaussian by default). medseg hands it a ``WindowRunner`` as the network:
it runs several windows per forward pass, under bf16/fp16 autocast where the
hardware supports it, in channels-last layout, and answers windows that hold
only background (every voxel at the intensity floor: air on CT) with constant
background scores instead of running the network on them.
"""

from __future__ import annotations

import logging

import torch

from medseg.precision import autocast_dtype, cpu_has_native_bf16  # noqa: F401  (cpu_has_native_bf16 re-exported)

log = logging.getLogger(__name__)

#: Score given to the background class in skipped windows (others get 0).
BACKGROUND_LOGIT = 20.0


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The inference autocast dtype for ``amp`` on ``device`` (None: full precision): ``medseg.precision``."""
    return autocast_dtype(amp, device)


class WindowRunner:
    """The callable MONAI's inferer calls with a batch of windows ``(B, C, *roi)``."""

    def __init__(
        self,
        model,
        *,
        num_classes: int,
        amp_dtype: torch.dtype | None,
        channels_last: bool,
        skip_background: bool,
        floor: float = 0.0,
    ):
        self.model = model
        self.num_classes = num_classes
        self.amp_dtype = amp_dtype
        self.channels_last = channels_last
        self.skip_background = skip_background
        self.floor = floor
        self.windows_run = 0
        self.windows_skipped = 0

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x = to_layout(x, self.channels_last)
        if self.amp_dtype is not None:
            with torch.autocast(device_type=x.device.type, dtype=self.amp_dtype):
                return self.model(x).float()
        return self.model(x).float()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.skip_background:
            self.windows_run += x.shape[0]
            return self._forward(x)
        # "Not at or below the floor" rather than "above it": a window whose maximum is NaN is run,
        # never taken for air (NaN compares false both ways).
        keep = ~(x.flatten(1).amax(dim=1) <= self.floor + 1e-6)
        n_keep = int(keep.sum())
        self.windows_run += n_keep
        self.windows_skipped += x.shape[0] - n_keep
        out = torch.zeros((x.shape[0], self.num_classes, *x.shape[2:]), dtype=torch.float32, device=x.device)
        out[:, 0] = BACKGROUND_LOGIT
        if n_keep:
            out[keep] = self._forward(x[keep])
        return out


def to_layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """``x`` in the channels-last layout of its rank (2D or 3D images) when ``channels_last``, else unchanged."""
    if channels_last and x.ndim in (4, 5):
        return x.contiguous(memory_format=torch.channels_last_3d if x.ndim == 5 else torch.channels_last)
    return x


def prepare_model(model, *, channels_last: bool):
    if channels_last:
        fmt = None
        for m in model.modules():
            if isinstance(m, torch.nn.Conv3d):
                fmt = torch.channels_last_3d
                break
            if isinstance(m, torch.nn.Conv2d):
                fmt = torch.channels_last
                break
        if fmt is not None:
            model = model.to(memory_format=fmt)
    return model


@torch.inference_mode()
def window_scores(
    model,
    image: torch.Tensor,
    *,
    roi_size,
    overlap: float,
    sw_batch_size: int,
    blend: str = "gaussian",
    device=None,
    num_classes: int | None = None,
    amp: str = "off",
    channels_last: bool = False,
    skip_background: bool = False,
    floor: float = 0.0,
    progress: bool = False,
    stats: dict | None = None,
) -> torch.Tensor:
    """Class scores (logits) for a ``(B, C, *spatial)`` image, stitched from overlapping windows.

    Windows run on ``device`` (the model's). The stitched output stays on that
    device when it fits; on a CUDA out-of-memory error it is redone with the
    stitched output on the CPU (windows still on the GPU). ``floor`` is the
    normalised intensity of air: windows at or below it everywhere are skipped
    (``skip_background``), and the image is padded with it at its borders.
    """
    from monai.inferers import sliding_window_inference

    device = torch.device(device) if device is not None else next(model.parameters()).device
    if num_classes is None:
        skip_background = False  # the runner needs the class count to fill skipped windows
    runner = WindowRunner(
        model,
        num_classes=num_classes or 0,
        amp_dtype=resolve_amp(amp, device),
        channels_last=channels_last,
        skip_background=skip_background,
        floor=floor,
    )

    def run(output_device):
        return sliding_window_inference(
            image.to(device),
            roi_size=tuple(int(r) for r in roi_size),
            sw_batch_size=int(sw_batch_size),
            predictor=runner,
            overlap=float(overlap),
            mode=blend,
            padding_mode="constant",
            cval=float(floor),
            sw_device=device,
            device=output_device,
            progress=progress,
        )

    try:
        out = run(device)
    except torch.cuda.OutOfMemoryError:
        log.warning("GPU memory is short for the stitched scores; stitching on the CPU instead")
        torch.cuda.empty_cache()
        runner.windows_run = runner.windows_skipped = 0
        out = run(torch.device("cpu"))
    if stats is not None:
        stats.update(
            windows_run=runner.windows_run,
            windows_skipped=runner.windows_skipped,
            amp=str(runner.amp_dtype).replace("torch.", "") if runner.amp_dtype else "off",
        )
    return out
