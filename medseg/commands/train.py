"""``medseg train``: train a model from a config and a data manifest."""

from medseg import api


def _run(args) -> int:
    r = api.train(
        config=args.config,
        manifest=args.manifest,
        out=args.out,
        overrides=args.set,
        progress=not args.no_progress,
        resume=args.resume,
        fold=args.fold,
        epochs=args.epochs,
        max_minutes=args.max_minutes,
        device=args.device,
        nproc=args.nproc,
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
    s.add_argument(
        "--no-progress", action="store_true", help="no progress bars (a plain line now and then is still printed)"
    )
    s.set_defaults(func=_run)
