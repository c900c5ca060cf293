#!/usr/bin/env python
"""Reproduce Szekeres & Izsák (2024) with dimplicit: a thin command over
:mod:`dimplicit.experiments.szekeres2024` (data, protocol, training, selection),
:mod:`dimplicit.experiments.baselines` (the ceiling check) and
:mod:`dimplicit.experiments.report` (the Markdown report).

``--protocol paper`` is the published protocol (``level`` kept, threshold grid capped at
z = 4); ``--protocol clean`` the same splits with ``level`` dropped and an uncapped threshold
rule; ``both`` runs the two.  Progress goes to stderr, one line per run; the JSON result is
rewritten after every run (``--json``), so an interrupted run keeps what it finished; at the
end the report is written and the JSON printed.

Examples::

    .venv/bin/python scripts/reproduce_szekeres2024.py --protocol both --seeds 10
    .venv/bin/python scripts/reproduce_szekeres2024.py --report-from a.json b.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from threadpoolctl import threadpool_limits

from dimplicit.atomic import write_file
from dimplicit.experiments import report
from dimplicit.experiments import szekeres2024 as S
from dimplicit.experiments.stats import load_average, machine_info

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help=f"folder with nsl-kdd/ and htru2/ (default: {DEFAULT_DATA})",
    )
    p.add_argument("--dataset", choices=[*S.DATASETS, "all"], default="all")
    p.add_argument("--protocol", choices=[*S.PROTOCOLS, "both"], default="paper")
    p.add_argument(
        "--models",
        default="all",
        help="comma-separated model names, or families (v0, v1, v2), or 'all' "
        f"(default); names: {', '.join(S.MODELS)}",
    )
    p.add_argument(
        "--seeds", type=int, default=10, help="run K seeds: FIRST .. FIRST+K-1 (default 10)"
    )
    p.add_argument(
        "--first-seed",
        type=int,
        default=S.FIRST_SEED,
        help=f"FIRST (default {S.FIRST_SEED}, as published)",
    )
    p.add_argument(
        "--out",
        default=str(REPO / "docs" / "results.md"),
        help="Markdown report (default docs/results.md); 'none' writes nothing",
    )
    p.add_argument(
        "--json",
        default=str(REPO / "docs" / "results.json"),
        help="JSON result, rewritten after every run (default docs/results.json); "
        "'none' writes nothing",
    )
    p.add_argument("--threads", type=int, default=1, help="BLAS threads (default 1)")
    p.add_argument(
        "--no-baselines",
        dest="baselines",
        action="store_false",
        help="skip the classical detectors of the ceiling check",
    )
    p.add_argument(
        "--report-from",
        nargs="+",
        type=Path,
        metavar="JSON",
        help="run nothing: write the report from saved JSON results (merged)",
    )
    p.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="quick checks only: stop every training run after this many steps",
    )
    args = p.parse_args(argv)
    names = []
    for m in (x.strip() for x in args.models.split(",")):
        if m == "all":
            names += list(S.MODELS)
        elif m in S.FAMILIES:
            names += [n for n, spec in S.MODELS.items() if spec.family == m]
        elif m in S.MODELS:
            names.append(m)
        elif m:
            p.error(f"unknown model {m!r}; choose from {', '.join(S.MODELS)}")
    if not names or args.seeds < 1:
        p.error("need at least one model and --seeds ≥ 1")
    args.models = list(dict.fromkeys(names))
    return args


def _write_json(path, result):
    if str(path).lower() != "none":
        text = json.dumps(result, indent=1).encode()
        write_file(Path(path), lambda fh: fh.write(text))


def main(argv=None) -> dict:
    """Run (or re-render); print and return the JSON result."""
    args = parse_args(argv)
    if args.report_from:
        result = report.load(args.report_from)
        _write_json(args.json, result)
    else:
        t0 = time.perf_counter()
        cmd = argv if argv is not None else sys.argv[1:]
        seeds = list(range(args.first_seed, args.first_seed + args.seeds))
        head = {
            "paper": "Szekeres & Izsák (2024), doi 10.1007/s11227-024-06117-6",
            "command": shlex.join(
                [".venv/bin/python", "scripts/reproduce_szekeres2024.py", *cmd]
            ),  # fmt: skip
            "machine": machine_info(),
            "threads": args.threads,
            "seeds": seeds,
            "max_steps": args.max_steps,
            "load_start": load_average(),
        }

        def save(partial):
            _write_json(
                args.json,
                head | partial | {"load_end": load_average(), "wall_s": time.perf_counter() - t0},
            )

        def log(line):
            print(line, file=sys.stderr, flush=True)

        with threadpool_limits(args.threads):
            result = S.run(
                args.data,
                protocols=list(S.PROTOCOLS) if args.protocol == "both" else [args.protocol],
                datasets=list(S.DATASETS) if args.dataset == "all" else [args.dataset],
                models=args.models, seeds=seeds, baselines=args.baselines,
                max_steps=args.max_steps, on_update=save, log=log,
            )  # fmt: skip
        result = head | result | {"load_end": load_average(), "wall_s": time.perf_counter() - t0}
        _write_json(args.json, result)
        result = report.merge([result])
    if str(args.out).lower() != "none":
        report.write(args.out, result)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
