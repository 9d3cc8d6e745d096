"""``medseg demo``: train on phantoms, segment DICOM phantoms, report."""

from medseg import api
from medseg.commands import from_args


def _run(args) -> int:
    res = api.demo(**from_args(args, "out n_train n_test epochs seed"), progress=not args.no_progress)
    return 0 if res["mean_dice"] >= args.min_dice else 1


def add(sub) -> None:
    s = sub.add_parser(
        "demo",
        help="train on phantoms, segment DICOM phantoms, report (about 5 minutes on 2 CPU cores)",
        description="Train a small 3D U-Net on synthetic CT phantoms, segment held-out DICOM phantoms and "
        "report Dice against their exact truth. Run again into the same --out, it reuses the "
        "finished demo (or makes it anew when the settings changed).",
    )
    s.add_argument(
        "--out",
        default="demo_out",
        help="output folder (default demo_out): data/, model/best.pt, predictions/, report/",
    )
    s.add_argument("--n-train", type=int, default=16, help="training phantoms (default 16)")
    s.add_argument("--n-test", type=int, default=4, help="held-out DICOM phantoms (default 4)")
    s.add_argument("--epochs", type=int, help="override the demo config's epochs")
    s.add_argument("--seed", type=int, default=0, help="seed of the phantoms and the training")
    s.add_argument("--min-dice", type=float, default=0.85, help="exit 1 when the mean Dice is below this")
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    s.set_defaults(func=_run)
