#!/usr/bin/python3
"""Differential test of omnibus::cron against python3-croniter (Debian's 1.3.5).

Usage: cron_oracle.py PATH_TO_CRON_TOOL [--cases N] [--seed S]

Generates N random expressions that both parsers accept with the same meaning, each with a
random start between 2000 and 2040 in a zone whose offset is fixed over the years reached,
asks croniter for the next 20 fire times, runs cron_tool once with every case on stdin, and
compares. Exits 0 when all agree, 1 on a disagreement (the first 10 are printed), 2 when it
cannot run (croniter missing, cron_tool missing or failing). Run it with /usr/bin/python3:
Debian's croniter is installed for the system Python only.

Left out, because croniter 1.3.5 departs from Vixie cron there (found by experiment):
- `*/n` in day-of-month or day-of-week while the other day field is restricted. Vixie treats
  a field that starts with `*` as unrestricted, so the day must match both fields; croniter
  looks at the expanded values instead, so `0 0 */2 * 1` is "odd days OR Mondays" to it and
  "odd days that are Mondays" to Vixie (and to us). Generated only with `*` in the other field.
- A restricted day field that covers every value (`1-31`, `0-6`, `0-7`, `SUN-SAT`) while the
  other is restricted too: croniter collapses it to `*` and ANDs (`0 0 1-31 * 1` = Mondays),
  Vixie ORs (every day). The generator rerolls such pairs.
- Day-of-week 7 (and `*/n` or `a/n` there, which reach 7) in six-field expressions: croniter
  maps 7 to Sunday only with five fields, so `0 0 * * 7 30` finds nothing.
- Both day fields restricted while no selected month has any of the selected days of month
  (`0 0 30 FEB MON`): Vixie (and we) fire on the Mondays of February; croniter searches the
  day-of-month half on its own, finds nothing and gives up. The generator rerolls such pairs.
- Day of month 30 or 31 together with 1 or 2, with February and March both selected: from a
  February day, croniter 1.3.5 steps forward by (30 - today) days as if February had 30 days
  and lands on 2 or 3 March, skipping 1 March (`0 0 1,31 * *` after 2019-02-02 gives
  2019-03-31, not 2019-03-01). Other months land exactly on the 1st, so only this pair matters.
- `*` inside a list (`*,5`): ours accepts it as all values; croniter mis-sorts it. Not generated.
- `SAT-SUN`-style ranges that end on Sunday written as 0 or SUN: croniter reads them as ending
  on 7, ours refuses a range whose start is after its end (7 and `SAT-7` are the way).
- Zones with daylight saving time: croniter's DST handling shifts results by the DST lag after
  it crosses a transition (see its _get_next), which is not the rule in cron.hpp. Zones are UTC,
  Etc/GMT±n, and Asia/Kolkata (+5:30) and Asia/Kathmandu (+5:45), fixed since before 2000; the
  DST rules are covered by hand-checked cases in cron_test.cpp.
- Steps larger than the field's maximum (`*/60` in minutes): ours refuses them, croniter accepts.
"""

import argparse
import importlib.metadata
import os
import random
import subprocess
import sys
from datetime import datetime, timezone

try:
    from croniter import croniter, CroniterBadDateError
    from zoneinfo import ZoneInfo
except ImportError as e:  # never pass quietly without the oracle
    print(f"cron_oracle: cannot import croniter or zoneinfo under {sys.executable}: {e}", file=sys.stderr)
    print("cron_oracle: install python3-croniter and run this script with /usr/bin/python3", file=sys.stderr)
    sys.exit(2)

OCCURRENCES = 20
ZONES = ["UTC", "Etc/GMT+5", "Etc/GMT-9", "Etc/GMT-14", "Etc/GMT+12", "Etc/GMT-1", "Etc/GMT+3",
         "Asia/Kolkata", "Asia/Kathmandu"]
START_MIN = int(datetime(2000, 1, 1, tzinfo=timezone.utc).timestamp())
START_MAX = int(datetime(2040, 12, 31, tzinfo=timezone.utc).timestamp())
MONTHS = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
MONTH_DAYS = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
DAYS = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]
MACROS = ["@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"]
# name: (min, max, the largest value the generator writes)
RANGES = {"second": (0, 59), "minute": (0, 59), "hour": (0, 23), "dom": (1, 31), "month": (1, 12), "dow": (0, 7)}


def february_skip(dom_values, month_values):
    """Would croniter's February overshoot (see the top) skip a day that fires?"""
    return {2, 3} <= set(month_values) and bool(dom_values & {30, 31}) and bool(dom_values & {1, 2})


class generator:
    def __init__(self, seed):
        self.r = random.Random(seed)

    def cased(self, name):
        c = self.r.random()
        return name if c < 0.5 else name.lower() if c < 0.8 else name.capitalize()

    def text(self, field, v):
        """A value as a number or, sometimes, a name."""
        if field == "month" and self.r.random() < 0.3:
            return self.cased(MONTHS[v - 1])
        if field == "dow" and v <= 6 and self.r.random() < 0.3:
            return self.cased(DAYS[v])
        return str(v)

    def item(self, field, top):
        """One list item other than `*`: (text, values). `top` is the largest value written."""
        lo, hi = RANGES[field]
        r = self.r
        kind = r.choice(["value", "value", "range", "range_step", "start_step"])
        if field == "dow" and top < hi and kind == "start_step":
            kind = "range_step"  # a/n runs to 7
        if kind == "value":
            v = r.randint(lo, top)
            return self.text(field, v), {v}
        a = r.randint(lo, top)
        b = r.randint(a, top)
        if kind == "range":
            return f"{self.text(field, a)}-{self.text(field, b)}", set(range(a, b + 1))
        n = r.randint(1, max(1, hi // r.choice([1, 2, 3, 4])))
        if kind == "range_step":
            return f"{self.text(field, a)}-{self.text(field, b)}/{n}", set(range(a, b + 1, n))
        return f"{self.text(field, a)}/{n}", set(range(a, hi + 1, n))

    def field(self, field, top, star_ok=True, restricted=False):
        """A whole field: (text, values, starts_with_star)."""
        lo, hi = RANGES[field]
        r = self.r
        if not restricted and star_ok:
            c = r.random()
            if c < 0.3:
                return "*", set(range(lo, hi + 1)), True
            if c < 0.45:
                n = r.randint(1, hi)
                return f"*/{n}", set(range(lo, hi + 1, n)), True
        items = [self.item(field, top) for _ in range(r.choice([1, 1, 1, 2, 3]))]
        return ",".join(t for t, _ in items), set().union(*(v for _, v in items)), False

    def expression(self):
        r = self.r
        if r.random() < 0.03:
            m = r.choice(MACROS)
            return (m.upper() if r.random() < 0.2 else m), m
        seconds = r.random() < 0.25
        dow_top = 6 if seconds else 7
        sec = self.field("second", 59)[0] if seconds else None
        minute = self.field("minute", 59)[0]
        hour = self.field("hour", 23)[0]
        month, month_values, _ = self.field("month", 12)
        c = r.random()
        dom_top = r.choice([28, 31])
        if c < 0.35:  # both restricted: Vixie's OR rule
            while True:
                dom, dom_values, _ = self.field("dom", dom_top, restricted=True)
                dow, dow_values, _ = self.field("dow", dow_top, restricted=True)
                folded = {0 if v == 7 else v for v in dow_values}
                dom_can_fire = any(d <= MONTH_DAYS[m - 1] for d in dom_values for m in month_values)
                if len(dom_values) < 31 and len(folded) < 7 and dom_can_fire and not february_skip(dom_values, month_values):
                    break
        elif c < 0.7:
            while True:
                dom, dom_values, _ = self.field("dom", dom_top)
                if not february_skip(dom_values, month_values):
                    break
            dow = "*"
        else:
            dom = "*"
            dow = self.field("dow", dow_top, star_ok=not seconds)[0]
        ours = " ".join(f for f in [sec, minute, hour, dom, month, dow] if f is not None)
        theirs = " ".join(f for f in [minute, hour, dom, month, dow, sec] if f is not None)
        return ours, theirs

    def start(self):
        r = self.r
        t = r.randint(START_MIN, START_MAX)
        c = r.random()
        if c < 0.2:
            t -= t % 60
        elif c < 0.3:
            t -= t % 3600
        elif c < 0.4:
            t -= t % 86400
        return t


def croniter_times(expr, zone, start):
    """The next OCCURRENCES fire times as epoch seconds, or a string saying why there are none."""
    it = croniter(expr, datetime.fromtimestamp(start, ZoneInfo(zone)))
    out = []
    try:
        for _ in range(OCCURRENCES):
            out.append(int(it.get_next(float)))
    except CroniterBadDateError:
        out.append("none")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cron_tool")
    ap.add_argument("--cases", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=20261129)
    args = ap.parse_args()
    if not (os.path.isfile(args.cron_tool) and os.access(args.cron_tool, os.X_OK)):
        print(f"cron_oracle: {args.cron_tool} is not an executable file", file=sys.stderr)
        return 2
    version = importlib.metadata.version("croniter")

    g = generator(args.seed)
    cases = []
    for _ in range(args.cases):
        ours, theirs = g.expression()
        zone = g.r.choice(ZONES)
        start = g.start()
        cases.append((ours, theirs, zone, start, croniter_times(theirs, zone, start)))

    stdin = "".join(f"{ours}\t{zone}\t{start}\t{OCCURRENCES}\n" for ours, _, zone, start, _ in cases)
    run = subprocess.run([args.cron_tool], input=stdin, capture_output=True, text=True, check=False)
    if run.returncode != 0:
        print(f"cron_oracle: {args.cron_tool} exited with {run.returncode}: {run.stderr.strip()}", file=sys.stderr)
        return 2
    lines = run.stdout.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) != len(cases):
        print(f"cron_oracle: {len(cases)} cases in, {len(lines)} lines out", file=sys.stderr)
        return 2

    def iso(t):
        if isinstance(t, str):
            return t
        return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

    bad = []
    for (ours, theirs, zone, start, expected), line in zip(cases, lines):
        got = line.split(" ") if line and not line.startswith("error\t") else [line]
        got = [t if t == "none" or t.startswith("error") else int(t) for t in got]
        if got == expected:
            continue
        # Both refuse an expression that cannot fire: we at construction, croniter on search.
        if expected == ["none"] and len(got) == 1 and isinstance(got[0], str) and "never fires" in got[0]:
            continue
        bad.append((ours, theirs, zone, start, got, expected))

    if bad:
        for ours, theirs, zone, start, got, expected in bad[:10]:
            i = next((k for k, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
            print(f"disagree: {ours!r} (croniter {theirs!r}) in {zone} after {iso(start)} ({start})")
            print(f"  first difference at occurrence {i + 1}:")
            print(f"  ours:     {' '.join(iso(t) for t in got[max(0, i - 1):i + 3])}")
            print(f"  croniter: {' '.join(iso(t) for t in expected[max(0, i - 1):i + 3])}")
        print(f"cron_oracle: {len(bad)} of {len(cases)} expressions disagree with croniter {version}")
        return 1
    print(f"cron_oracle: {len(cases)} expressions x {OCCURRENCES} occurrences agree with croniter {version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
