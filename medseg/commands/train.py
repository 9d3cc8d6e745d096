"""``medseg train``: train a model from a config and a data manifest."""


def _run(args) -> int:
    from medseg import api

    r = api.train(config=args.config, manifest=args.manifest, out=args.out, overrides=args.set, progress=not args.no_progress)
    print(f"best validation mean Dice {r.best_mean_dice:.3f} (epoch {r.best_epoch}); checkpoint {r.best_checkpoint}")
    for k, v in r.per_structure_dice.items():
        print(f"  {k:<16} {v:.3f}")
    return 0


def add(sub) -> None:
    s = sub.add_parser("train", help="train a model from a config and a data manifest")
    s.add_argument("--config", required=True, help="training YAML, e.g. configs/training/phantom_demo.yaml")
    s.add_argument("--manifest", required=True, help="CSV with case_id,image,label,split")
    s.add_argument("--out", required=True, help="run directory")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value, e.g. training.epochs=20")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=_run)
