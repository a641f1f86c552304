"""``edgekit compare``: a Table-7-style comparison of models on CLUE (M6-Rec section 4.5).

Input: result JSON files written by ``edgekit eval --out`` (one per model and task), or directories
holding such files. Rows are models (the ``name`` of each result, by default the evaluated path),
columns: parameters, non-zeros, bundle bytes (dense and packed), accuracy per task, latency.
Output: ``compare.md``, ``compare.csv`` and ``accuracy_vs_size.png`` in ``--out``.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from edgekit.errors import UserError
from edgekit.io import write_json


def task_order() -> list[str]:
    """Columns in the order of ``edgekit.tasks.task_names()``: every task ``edgekit finetune`` knows (one
    list, so a task added there is a column here); other names (registered later) follow."""
    from edgekit.tasks import task_names

    return task_names()


def _results(items) -> list[dict]:
    files: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            files += sorted(p.rglob("eval*.json"))
        elif p.is_file():
            files.append(p)
        else:
            raise UserError(f"'{item}' does not exist; pass eval result files (edgekit eval --out) or directories of them.")
    results = []
    for f in files:
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            raise UserError(f"'{f}' is not a JSON file; pass result files written by `edgekit eval --out`.") from None
        if not isinstance(data, dict) or "accuracy" not in data or "task" not in data:
            raise UserError(f"'{f}' is not an eval result (no 'accuracy'/'task'); write one with `edgekit eval --out`.")
        results.append(data)
    if not results:
        raise UserError("no eval results found; run `edgekit eval MODEL --task T --out eval.json` first.")
    return results


def model_size(path) -> dict:
    """Parameters, non-zeros and bytes of a checkpoint or bundle directory."""
    p = Path(path)
    manifest = p / "manifest.json"
    if manifest.is_file():
        m = json.loads(manifest.read_text(encoding="utf-8"))
        facts = m.get("model", {})
        packed = p.with_name(p.name + ".edgepack")
        return {"parameters": facts.get("parameters"), "nonzeros": facts.get("nonzero_parameters"),
                "bytes": m.get("sizes", {}).get("dense_bytes"), "gzip_bytes": m.get("sizes", {}).get("gzip_bytes"),
                "packed_bytes": packed.stat().st_size if packed.is_file() else None,
                "format": f"{m.get('format')} {m.get('precision', '')}".strip()}
    if (p / "config.json").is_file():
        from edgekit.info import model_info

        info = model_info(p)
        return {"parameters": info["parameters"], "nonzeros": info["nonzero_parameters"],
                "bytes": info["weights_bytes"], "gzip_bytes": None, "packed_bytes": None, "format": "pytorch fp32"}
    return {"parameters": None, "nonzeros": None, "bytes": None, "gzip_bytes": None, "packed_bytes": None, "format": "?"}


def compare(items, out=None, overwrite: bool = False) -> dict:
    """Collect eval results into one table; write Markdown, CSV and a PNG plot to ``out``.

    ``out`` is written atomically; an existing one is replaced only if it is an earlier comparison
    and ``overwrite`` (``edgekit.io.atomic_dir``: a directory edgekit did not write is refused)."""
    if out is not None:
        from edgekit.io import check_out

        check_out(out, "comparison", overwrite)
    results = _results(items)
    rows: dict[str, dict] = {}
    tasks = []
    for r in results:
        name = r.get("name") or r["model"]
        row = rows.setdefault(name, {"model": name, "accuracy": {}, "latency_ms": {}, "notes": set(), **model_size(r["model"])})
        row["accuracy"][r["task"]] = r["accuracy"]
        row["latency_ms"][r["task"]] = r.get("ms_per_example_all_exits")
        if r.get("note"):
            row["notes"].add(r["note"])
        if r["task"] not in tasks:
            tasks.append(r["task"])
    order = task_order()
    tasks.sort(key=lambda t: order.index(t) if t in order else len(order))

    def fmt(n):
        return "" if n is None else f"{n / 1e6:.2f}M"

    def fmt_bytes(n):
        return "" if n is None else f"{n / 2**20:.2f} MiB"

    header = ["model", "format", "parameters", "non-zeros", "bytes", "packed bytes", *[t.upper() for t in tasks], "avg",
              "ms/example"]
    table = []
    for row in rows.values():
        accs = [row["accuracy"].get(t) for t in tasks]
        # over every task of the table, or none: an average of fewer tasks is not comparable with the others
        row["average"] = sum(accs) / len(accs) if None not in accs else None
        lat = [v for v in row["latency_ms"].values() if v is not None]
        table.append([row["model"], row["format"], fmt(row["parameters"]), fmt(row["nonzeros"]), fmt_bytes(row["bytes"]),
                      fmt_bytes(row["packed_bytes"]), *["" if a is None else f"{100 * a:.2f}" for a in accs],
                      "" if row["average"] is None else f"{100 * row['average']:.2f}",
                      f"{sum(lat) / len(lat):.2f}" if lat else ""])
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(r) + " |" for r in table]
    notes = sorted(set().union(*[r["notes"] for r in rows.values()]))
    if len(tasks) > 1 and any(r["average"] is None for r in rows.values()):
        notes.append("avg is left empty for a model without a result on every task (and it is not plotted).")
    if notes:
        md += [""] + [f"Note: {n}" for n in notes]
    markdown = "\n".join(md)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(table)
    summary = {"tasks": tasks, "rows": [{**{k: v for k, v in r.items() if k != "notes"}, "notes": sorted(r["notes"])}
                                        for r in rows.values()], "markdown": markdown}
    if out is not None:
        from edgekit.io import atomic_dir

        with atomic_dir(out, "comparison", overwrite) as tmp:
            (tmp / "compare.md").write_text(markdown + "\n", encoding="utf-8")
            (tmp / "compare.csv").write_text(buf.getvalue(), encoding="utf-8")
            write_json(tmp / "compare.json", summary)
            _plot(rows.values(), tmp / "accuracy_vs_size.png")
    return summary


def _plot(rows, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for r in rows:
        size = r.get("packed_bytes") or r.get("gzip_bytes") or r.get("bytes")
        if size is None or r.get("average") is None:
            continue
        ax.scatter(size / 2**20, 100 * r["average"], s=40)
        ax.annotate(r["model"], (size / 2**20, 100 * r["average"]), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("download size (MiB, packed or gzip where available; log scale)")
    ax.set_ylabel("average accuracy (%)")
    ax.set_title("Accuracy against size")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
