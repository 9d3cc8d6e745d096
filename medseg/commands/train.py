"""``medseg train``: train a model from a config and a data manifest."""

from medseg import api
from medseg.commands import NO_PROGRESS_HELP, from_args


def _run(args) -> int:
    r = api.train(
        **from_args(args, "config manifest out resume fold epochs max_minutes device nproc"),
        overrides=args.set,
        progress=not args.no_progress,
    )
    print(f"best validation mean Dice {r.best_mean_dice:.3f} (epoch {r.best_epoch}); checkpoint {r.best_checkpoint}")
    for k, v in r.per_structure_dice.items():
        print(f"  {k:<16} {v:.3f}")
    return 0


def add(sub) -> None:
    s = sub.add_parser("train", help="train a model from a config and a data manifest")
    s.add_argument("--config", required=True, help="training YAML, e.g. configs/training/phantom_demo.yaml")
    s.add_argument("--manifest", required=True, help="CSV with case_id,image,label,split")
    s.add_argument("--out", required=True, help="run directory")
    s.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a config value, e.g. training.epochs=20"
    )
    s.add_argument("--epochs", type=int, help="number of epochs (training.epochs)")
    s.add_argument(
        "--max-minutes",
        type=float,
        help="wall-clock budget: the learning-rate schedule runs on the budget spent, validation every ~10%% "
        "of it, the run uses the whole budget (final validation included) and keeps the best checkpoint; "
        "epochs are then not used",
    )
    s.add_argument("--resume", action="store_true", help="continue the run in --out after its last finished epoch")
    s.add_argument("--fold", type=int, help="validate on the manifest's cases with this fold (others train)")
    s.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    s.add_argument(
        "--nproc", type=int, default=1, help="data-parallel processes (DDP: gloo on CPU, NCCL with one GPU each)"
    )
    s.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)
    s.set_defaults(func=_run)
