"""The Markdown report of a Szekeres & Izsák (2024) reproduction run.

The fixed prose lives in ``szekeres2024_report.md`` (a :class:`string.Template`); this module
computes every table and every sentence that depends on numbers from the run's JSON, so a
report can be re-rendered from a saved result without training.
"""

from __future__ import annotations

import json
from pathlib import Path
from string import Template

import numpy as np

from dimplicit.experiments import szekeres2024 as S
from dimplicit.experiments.stats import summarize

TEMPLATE = Path(__file__).with_name("szekeres2024_report.md")
# Everything from this line on in an existing report is kept when the report is rewritten.
KEEP_MARKER = "<!-- Not generated: kept as is when the report is regenerated. -->"
IMPLICIT = ("v1", "v2")


def merge(results: list[dict]) -> dict:
    """Merge the JSON results of several runs (e.g. one process per data set)."""
    out = {"commands": [], "seeds": set(), "data": {}, "runs": {}, "baselines": {},
           "skipped": [], "load_start": None, "load_end": None, "wall_s": 0.0}  # fmt: skip
    for r in results:
        if "command" in r:
            out["commands"].append(r["command"])
        out["seeds"].update(r.get("seeds", []))
        for key in ("data", "runs", "baselines"):
            for proto, by_ds in r.get(key, {}).items():
                for ds, v in by_ds.items():
                    into = out[key].setdefault(proto, {}).setdefault(ds, {})
                    if key != "runs":
                        into.update(v)
                        continue
                    for name, entry in v.items():  # the seeds of one model add up
                        have = into.setdefault(name, {**entry, "per_seed": []})
                        seen = {x["seed"] for x in have["per_seed"]}
                        have["per_seed"] += [x for x in entry["per_seed"] if x["seed"] not in seen]
        out["skipped"] += r.get("skipped", [])
        out.setdefault("notes", []).extend(r.get("notes", []))
        out["load_start"] = out["load_start"] or r.get("load_start")
        out["load_end"] = r.get("load_end") or out["load_end"]
        out["wall_s"] = max(out["wall_s"], r.get("wall_s") or 0.0)
        for k in ("machine", "threads"):
            out.setdefault(k, r.get(k))
        if r.get("max_steps"):
            out["max_steps"] = r["max_steps"]
    out["seeds"] = sorted(out["seeds"])
    return out


def _summary(entry) -> dict | None:
    runs = entry.get("per_seed", []) if entry else []
    return summarize(runs, S.RUN_METRICS) if runs else None


def _pm(s, key, digits=3) -> str:
    m, h = s["mean"].get(key), s["ci95"].get(key)
    if m is None:
        return "–"
    return f"{m:.{digits}f}" if h is None else f"{m:.{digits}f} ± {h:.{digits}f}"


def _pub(pub, key, digits=3) -> str:
    m, h = pub[key]
    return f"{m:.{digits}f} ± {h:.{digits}f}"


def _models_run(result, proto, ds) -> dict:
    """Model name → summary, in the order of :data:`MODELS`, for the models that ran."""
    runs = result["runs"].get(proto, {}).get(ds, {})
    out = {}
    for name in S.MODELS:
        s = _summary(runs.get(name))
        if s is not None:
            out[name] = s
    return out


def paper_tables(result) -> str:
    pub = S.published()
    lines = []
    for ds in S.DATASETS:
        runs = _models_run(result, "paper", ds)
        if not runs:
            continue
        lines += [
            f"### {ds}",
            "",
            "| model | seeds | test F1 | test precision | test recall | valid AUC | train s | "
            "published F1 | published precision | published recall | published valid AUC | "
            "published s | F1 ≥ published lower end | train s ≤ published / 10 |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name, spec in S.MODELS.items():
            p = pub[(ds, spec.label)]
            published = (f"{_pub(p, 'f1')} | {_pub(p, 'precision')} | {_pub(p, 'recall')} | "
                         f"{_pub(p, 'val_auc')} | {p['train_s'][0]:.1f}")  # fmt: skip
            s = runs.get(name)
            if s is None:
                lines.append(f"| {spec.label} | 0 | not run | | | | | {published} | | |")
                continue
            lo = p["f1"][0] - p["f1"][1]
            ok_f1 = "yes" if s["mean"]["f1"] >= lo else "**no**"
            ok_t = "yes" if s["mean"]["train_s"] <= p["train_s"][0] / 10 else "**no**"
            lines.append(
                f"| {spec.label} | {s['n']} | {_pm(s, 'f1')} | {_pm(s, 'precision')} | "
                f"{_pm(s, 'recall')} | {_pm(s, 'val_auc')} | {s['mean']['train_s']:.1f} | "
                f"{published} | {ok_f1} (≥ {lo:.3f}) | {ok_t} |"
            )
        lines.append("")
    return "\n".join(lines) if lines else "(no paper-protocol runs)"


def _best_implicit(runs: dict):
    """The implicit model (v1/v2) with the best mean *validation* F1 (no test peeking)."""
    cands = {n: s for n, s in runs.items() if S.MODELS[n].family in IMPLICIT}
    if not cands:
        return None, None
    name = max(cands, key=lambda n: cands[n]["mean"]["val_f1"])
    return name, cands[name]


def targets(result) -> str:
    pub = S.published()
    out = []
    for ds in S.DATASETS:
        runs = _models_run(result, "paper", ds)
        if not runs:
            continue
        low = [n for n, s in runs.items()
               if s["mean"]["f1"] < pub[(ds, S.MODELS[n].label)]["f1"][0]
               - pub[(ds, S.MODELS[n].label)]["f1"][1]]  # fmt: skip
        out.append(
            f"- {ds}: mean test F1 at or above the lower end of the published interval for "
            f"{len(runs) - len(low)} of the {len(runs)} models run"
            + (f"; below it: {', '.join(S.MODELS[n].label for n in low)}." if low else ".")
        )
        ratio = {n: s["mean"]["train_s"] / pub[(ds, S.MODELS[n].label)]["train_s"][0]
                 for n, s in runs.items()}  # fmt: skip
        slow = [n for n in runs if ratio[n] > 0.1]
        detail = ", ".join(f"{S.MODELS[n].label} {ratio[n]:.2f}" for n in slow)
        out.append(
            f"- {ds}: mean training time (validation passes included) ≤ 1/10 of the published "
            f"mean for {len(runs) - len(slow)} of the {len(runs)} models run"
            + (f" (ours / published: {detail})." if slow else ".")
        )
        name, s = _best_implicit(runs)
        best_test = max((n for n in runs if S.MODELS[n].family in IMPLICIT),
                        key=lambda n: runs[n]["mean"]["f1"], default=None)  # fmt: skip
        if name is None:
            out.append(f"- {ds}: no implicit (v1/v2) model was run.")
            continue
        m = s["mean"]
        if ds == "nsl-kdd":
            goal, ok = "mean test F1 ≥ 0.93", m["f1"] >= 0.93
        else:
            goal, ok = (
                "mean test F1 ≥ 0.78 with mean recall ≥ 0.89",
                (m["f1"] >= 0.78 and m["recall"] >= 0.89),
            )
        out.append(
            f"- {ds}: best implicit model by mean validation F1 is {S.MODELS[name].label} "
            f"(test F1 {m['f1']:.3f}, recall {m['recall']:.3f}, precision "
            f"{m['precision']:.3f}; {s['n']} seed(s)); target {goal}: "
            f"{'met' if ok else '**not met**'}. Highest mean test F1 of any implicit model run: "
            f"{S.MODELS[best_test].label} {runs[best_test]['mean']['f1']:.3f} (recall "
            f"{runs[best_test]['mean']['recall']:.3f})."
        )
    return "\n".join(out) if out else "(no paper-protocol runs)"


def clean_tables(result) -> str:
    pub = S.published()
    lines = []
    for ds in S.DATASETS:
        runs = _models_run(result, "clean", ds)
        if not runs:
            continue
        lines += [
            f"### {ds}",
            "",
            "| model | seeds | test F1 | test precision | test recall | valid F1 | valid AUC | "
            "test AUC | train s | published F1 (paper protocol) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name, s in runs.items():
            label = S.MODELS[name].label
            lines.append(
                f"| {label} | {s['n']} | {_pm(s, 'f1')} | {_pm(s, 'precision')} | "
                f"{_pm(s, 'recall')} | {_pm(s, 'val_f1')} | {_pm(s, 'val_auc')} | "
                f"{_pm(s, 'roc_auc')} | {s['mean']['train_s']:.1f} | "
                f"{_pub(pub[(ds, label)], 'f1')} |"
            )
        lines.append("")
    return "\n".join(lines) if lines else "(no clean-protocol runs)"


def clean_statement(result) -> str:
    out = []
    for ds in S.DATASETS:
        runs = _models_run(result, "clean", ds)
        base = result["baselines"].get("clean", {}).get(ds, {})
        if not runs or not base:
            continue
        f1 = {n: b["clean"]["f1"] for n, b in base.items()}
        name, s = _best_implicit(runs)
        if name is None:
            continue
        m = s["mean"]["f1"]
        above = sorted(n for n, v in f1.items() if v > m)
        out.append(
            f"- {ds} (clean protocol, no choice made on test labels): the implicit model with the "
            f"best mean validation F1, {S.MODELS[name].label}, has mean test F1 {m:.3f}; the "
            f"classical detectors, calibrated by the same rule, range over "
            f"{min(f1.values()):.3f}–{max(f1.values()):.3f}; {len(above)} of {len(f1)} are above "
            f"it" + (f" ({', '.join(f'`{n}` {f1[n]:.3f}' for n in above)})." if above else ".")
        )
    return "\n".join(out)


def _delta(a: list[dict], b: list[dict]) -> dict:
    return {k: float(np.mean([x[k] for x in a]) - np.mean([x[k] for x in b]))
            for k in ("f1", "recall", "precision")}  # fmt: skip


def effects(result) -> str:
    rows = []
    for ds in S.DATASETS:
        # The cap: the paper runs' own metrics minus the same checkpoints, uncapped rule.
        paper = result["runs"].get("paper", {}).get(ds, {})
        runs = [r for e in paper.values() for r in e["per_seed"]]
        if runs:
            d = _delta(runs, [r["other_rule"] for r in runs])
            rows.append((ds, "z ≤ 4 cap (grid rule − uncapped rule)", "autoencoders", len(runs), d))
        base = result["baselines"].get("paper", {}).get(ds, {})
        if base:
            d = _delta([b["paper"] for b in base.values()], [b["clean"] for b in base.values()])
            rows.append((ds, "z ≤ 4 cap (grid rule − uncapped rule)", "baselines", len(base), d))
        if ds != "nsl-kdd":
            continue
        clean = result["runs"].get("clean", {}).get(ds, {})
        pairs = [(p, c) for n in paper.keys() & clean.keys()
                 for p in paper[n]["per_seed"] for c in clean[n]["per_seed"]
                 if p["seed"] == c["seed"]]  # fmt: skip
        if pairs:
            d = _delta([p["other_rule"] for p, _ in pairs], [c for _, c in pairs])
            rows.append((ds, "`level` kept − dropped (uncapped rule)", "autoencoders",
                         len(pairs), d))  # fmt: skip
        cbase = result["baselines"].get("clean", {}).get(ds, {})
        both = sorted(base.keys() & cbase.keys())
        if both:
            d = _delta([base[n]["clean"] for n in both], [cbase[n]["clean"] for n in both])
            rows.append((ds, "`level` kept − dropped (uncapped rule)", "baselines", len(both), d))
    if not rows:
        return "(nothing to compare)"
    lines = ["| data | effect | detectors | runs | Δ test F1 | Δ test recall | Δ test precision |",
             "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for ds, what, who, n, d in rows:
        lines.append(f"| {ds} | {what} | {who} | {n} | {d['f1']:+.3f} | {d['recall']:+.3f} | "
                     f"{d['precision']:+.3f} |")  # fmt: skip
    return "\n".join(lines)


def ceiling(result) -> str:
    lines = []
    for proto in S.PROTOCOLS:
        for ds in S.DATASETS:
            runs = _models_run(result, proto, ds)
            base = result["baselines"].get(proto, {}).get(ds, {})
            if not runs and not base:
                continue
            lines += [
                f"### {proto} protocol, {ds}",
                "",
                "| detector | test F1 | test recall | test precision | valid AUC | test AUC | "
                "oracle test F1 | oracle test F1 at recall ≥ 0.90 |",
                "| --- | --- | --- | --- | --- | --- | --- | --- |",
            ]
            det = {S.MODELS[n].label: s["mean"] for n, s in runs.items()}
            det |= {f"`{n}` (baseline)": b[proto] for n, b in base.items()}
            for n, m in det.items():
                lines.append(
                    f"| {n} | {m['f1']:.3f} | {m['recall']:.3f} | {m['precision']:.3f} | "
                    f"{m['val_auc']:.3f} | {m['roc_auc']:.3f} | {m['oracle_f1']:.3f} | "
                    f"{m['oracle_f1_r90']:.3f} |"
                )
            top = max(det, key=lambda n: det[n]["oracle_f1"])
            top90 = max(det, key=lambda n: det[n]["oracle_f1_r90"])
            lines += [
                "",
                f"Best test F1 of any threshold on any of these {len(det)} detectors: "
                f"{det[top]['oracle_f1']:.3f} ({top}); with recall ≥ 0.90: "
                f"{det[top90]['oracle_f1_r90']:.3f} ({top90}). "
                + (
                    "(NSL-KDD target 0.93.)"
                    if ds == "nsl-kdd"
                    else "(HTRU2 target: F1 ≥ 0.78 with recall ≥ 0.89.)"
                ),
                "",
            ]
    return "\n".join(lines) if lines else "(no baselines run)"


def time_section(result) -> str:
    pub = S.published()
    lines = ["| protocol | data | model | seeds | train s (mean / max) | CPU s (mean) | "
             "validations per run | published s | ours / published |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    per_ds_family = {}
    for proto in S.PROTOCOLS:
        for ds in S.DATASETS:
            for name, s in _models_run(result, proto, ds).items():
                spec = S.MODELS[name]
                p = pub[(ds, spec.label)]["train_s"][0]
                t = s["mean"]["train_s"]
                cpu = f"{s['mean']['train_cpu_s']:.1f}" if "train_cpu_s" in s["mean"] else "–"
                per_ds_family.setdefault((ds, spec.family), []).append(t)
                lines.append(
                    f"| {proto} | {ds} | {spec.label} | {s['n']} | {t:.1f} / "
                    f"{s['max']['train_s']:.1f} | {cpu} | {s['mean']['evaluations']:.0f} | "
                    f"{p:.1f} | {t / p:.2f} |"
                )
    # The full run: 18 models × 2 data sets × 10 seeds × 2 protocols, each (data set, family)
    # at the mean measured time of that family (or of all families when none of it ran).
    total, guessed = 0.0, []
    for ds in S.DATASETS:
        every = [t for (d, _), v in per_ds_family.items() if d == ds for t in v]
        for fam in S.FAMILIES:
            v = per_ds_family.get((ds, fam)) or every
            if not v:
                guessed.append(f"{ds} (nothing run: not counted)")
                break
            if not per_ds_family.get((ds, fam)):
                guessed.append(f"{ds} {fam}")
            total += float(np.mean(v)) * len(S.SIZES) * 10 * 2
    lines += [
        "",
        f"Estimated wall time of the full run (18 models × 2 data sets × 10 seeds × 2 "
        f"protocols, one process, at the mean training time measured here per data set and "
        f"family): about {total / 3600:.1f} h, plus data preparation and test scoring (seconds "
        f"per run)"
        + (
            f"; families not measured, estimated from the others: {', '.join(guessed)}."
            if guessed
            else "."
        ),
    ]
    return "\n".join(lines)


def render(result: dict) -> str:
    """The report's Markdown text for ``result`` (one run's JSON or :func:`merge`'s)."""
    m = result.get("machine") or {}
    seeds = result.get("seeds") or []
    scope = ("Not the full protocol: see the tables for which models and seeds ran, and "
             "*Time* for the full run's estimate." if len(seeds) < 10 else "")  # fmt: skip
    if result.get("max_steps"):
        scope += (
            f" **Quick check**: training stopped after {result['max_steps']} steps "
            "(`--max-steps`); not a reproduction."
        )
    if result.get("skipped"):
        scope += " Skipped: " + "; ".join(result["skipped"]) + "."
    data = []
    for proto, by_ds in result.get("data", {}).items():
        for ds, info in by_ds.items():
            data.append(f"- {proto} / {ds}: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    cmds = result.get("commands") or [result.get("command", "?")]
    wall = result.get("wall_s")
    values = {
        "commands": "\n".join(cmds),
        "seeds": ", ".join(map(str, seeds)) or "none",
        "scope": scope,
        "cpu": m.get("cpu", "?"),
        "cpus": m.get("logical_cpus", "?"),
        "threads": result.get("threads", "?"),
        "blas": ", ".join(m.get("blas", [])) or "?",
        "numpy": m.get("numpy", "?"),
        "python": m.get("python", "?"),
        "load_start": result.get("load_start"),
        "load_end": result.get("load_end"),
        "wall": f"{wall:.0f} s" if wall else "?",
        "paper_tables": paper_tables(result),
        "targets": targets(result),
        "clean_tables": clean_tables(result),
        "clean_statement": clean_statement(result),
        "effects": effects(result),
        "ceiling": ceiling(result),
        "time": time_section(result),
        "data": "\n".join(data),
        "notes": "\n".join(f"- {n}" for n in result.get("notes", [])) or "(none)",
    }
    return Template(TEMPLATE.read_text(encoding="utf-8")).substitute(values)


def write(path, result: dict) -> None:
    """Write the report of ``result`` to ``path``, keeping what follows :data:`KEEP_MARKER`."""
    path = Path(path)
    text = render(result)
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    if KEEP_MARKER in old:  # hand-maintained sections (e.g. scoring benchmarks) survive
        text += "\n" + old[old.index(KEEP_MARKER) :]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def load(paths) -> dict:
    """Read and merge saved JSON results."""
    return merge([json.loads(Path(p).read_text()) for p in paths])
