#!/usr/bin/env python3
"""Prints the peers comparison as one Markdown table.

Reads, from the files named on the command line or from stdin, lines of the form
  peer: system=<name> setting=<name> version=<x.y.z> enqueue_per_s=<f> drain_per_s=<f> p99_ms=<f> tx_enqueue_per_s=<f>
(a field may be missing or '-' when a system does not measure it; 'inf' means not every job
arrived before the deadline) and optionally one
  machine: cores=<n> node=<v> postgresql=<v> [key=value ...]
line. Other lines are ignored. Lines whose system is 'omnibus' are the reference: each column's
1.00 is the best Omnibus row for that column (highest rate, lowest p99); for enqueue/s the
reference is the best Omnibus row whose setting names the transactional outbox (outbox/tx), if
there is one, else the best of the other Omnibus rows. Ratios are this row / the reference.
"""
import math
import os
import re
import sys

COLUMNS = [  # (field, heading, higher is better)
    ("enqueue_per_s", "enqueue/s", True),
    ("drain_per_s", "drain/s", True),
    ("p99_ms", "p99 ms", False),
    ("tx_enqueue_per_s", "tx enqueue/s", True),
]
PAIR = re.compile(r"(\w+)=(\S+)")


def parse(stream, rows, machine):
    for raw in stream:
        line = raw.strip()
        if line.startswith("peer:"):
            fields = dict(PAIR.findall(line[len("peer:"):]))
            if "system" not in fields or "setting" not in fields:
                sys.exit(f"table.py: a peer line without system= or setting=: {line}")
            row = {"system": fields["system"], "setting": fields["setting"], "version": fields.get("version", "")}
            for field, _, _ in COLUMNS:
                value = fields.get(field)
                if value in (None, "-", ""):
                    row[field] = None
                    continue
                try:
                    row[field] = float(value)
                except ValueError:
                    sys.exit(f"table.py: {field}={value} is not a number: {line}")
                if math.isnan(row[field]):
                    sys.exit(f"table.py: {field} is NaN: {line}")
            rows.append(row)
        elif line.startswith("machine:"):
            machine.update(PAIR.findall(line[len("machine:"):]))


def is_outbox(row):
    return re.search(r"outbox|tx|transaction", row["setting"], re.I) is not None


def reference(omnibus, field, higher):
    candidates = [r for r in omnibus if r[field] is not None]
    if field == "enqueue_per_s" and any(is_outbox(r) for r in candidates):
        candidates = [r for r in candidates if is_outbox(r)]
    if not candidates:
        return None
    pick = max if higher else min
    return pick(candidates, key=lambda r: r[field])


def number(x):
    if x is None:
        return "—"
    if math.isinf(x):
        return "∞"
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def ratio(value, ref):
    if value is None or ref is None:
        return ""
    if math.isinf(value):
        return " (∞×)" if not math.isinf(ref) else ""
    if ref == 0 or math.isinf(ref):
        return ""
    r = value / ref
    return f" ({r:.2f}×)" if r >= 0.01 or r == 0 else " (<0.01×)"


def main():
    rows, machine = [], {}
    if len(sys.argv) > 1:
        for name in sys.argv[1:]:
            with open(name, encoding="utf-8") as stream:
                parse(stream, rows, machine)
    else:
        parse(sys.stdin, rows, machine)
    if not rows:
        sys.exit("table.py: no 'peer:' lines in the input")

    versions = []
    for r in rows:
        entry = f"{r['system']} {r['version']}".strip()
        if r["system"] != "omnibus" and r["version"] and entry not in versions:
            versions.append(entry)
    cores = machine.get("cores", str(os.cpu_count()))
    parts = [f"cores={cores}"]
    for key in ("node", "postgresql"):
        if key in machine:
            parts.append(f"{key}={machine[key]}")
    parts += [f"{k}={v}" for k, v in machine.items() if k not in ("cores", "node", "postgresql")]
    print(f"Machine: {', '.join(parts)}; peers: {', '.join(versions) if versions else 'none'}")
    print()

    omnibus = [r for r in rows if r["system"] == "omnibus"]
    refs = {field: reference(omnibus, field, higher) for field, _, higher in COLUMNS}
    if omnibus:
        described = []
        for field, heading, higher in COLUMNS:
            ref = refs[field]
            described.append(f"{heading} → omnibus {ref['setting']}" if ref else f"{heading} → none")
        print("Ratios are row ÷ reference (rates: below 1× is slower than Omnibus; p99: above 1× is slower). "
              "Reference rows: " + "; ".join(described) + ".")
    else:
        print("No Omnibus row in the input: no ratios.")
    print()

    ordered = omnibus + [r for r in rows if r["system"] != "omnibus"]
    print("| system | setting | " + " | ".join(h for _, h, _ in COLUMNS) + " |")
    print("|---|---|" + "---:|" * len(COLUMNS))
    for r in ordered:
        cells = []
        for field, _, _ in COLUMNS:
            ref = refs[field][field] if refs[field] else None
            cells.append(number(r[field]) + ratio(r[field], ref))
        print(f"| {r['system']} | {r['setting']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
