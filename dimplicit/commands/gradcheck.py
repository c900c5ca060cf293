"""``dimplicit gradcheck``: analytic gradients vs central finite differences, as JSON."""

from __future__ import annotations

import json

from dimplicit.commands._types import positive_int, seed


def add_parser(sub):
    p = sub.add_parser(
        "gradcheck",
        help="check gradients against finite differences (float64) and print JSON",
        description=(
            "Build small random float64 models (dense, layered, layered with an implicit block; "
            "every activation) and compare each gradient method with central finite differences. "
            "Prints ONE JSON object: per parameter max relative error for implicit and neumann "
            "(key 'max' over parameters), and the cosine with the finite-difference gradient "
            "for jfb and phantom-k."
        ),
    )
    p.add_argument("--seed", type=seed, default=0, metavar="S", help="seed of the random models")
    p.add_argument(
        "--k", type=positive_int, default=3, metavar="K", help="terms of the phantom-k gradient"
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from dimplicit import gradcheck

    print(json.dumps(gradcheck.run(seed=args.seed, k=args.k)))
    return 0
