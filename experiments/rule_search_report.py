"""Tables of the AutoWU rule search (issue 12) from rule_search_runs.jsonl."""
import collections
import json
import sys

import numpy as np

from experiments import report

RUNS = "experiments/results/rule_search_runs.jsonl"
COMPARE = "experiments/results/compare_runs.jsonl"
CASES = [(1024, 20), (4096, 20), (8192, 20), (4096, 10), (4096, 40)]


def main():
  rows = [json.loads(l) for l in open(RUNS) if l.strip()]
  grid = collections.defaultdict(list)  # (sched, B, E) -> [(acc, peak, w)]
  for l in open(COMPARE):
    r = json.loads(l)
    if r["method"] == "grid":
      grid[("warmup_cosine_lamb", r["batch_size"], r["epochs"])].append(
          (r["summary"]["final_test_accuracy"], r["peak_lr"],
           r["warmup_fraction"]))
  cand = collections.defaultdict(dict)
  for r in rows:
    c = r["config"]
    if c.get("peak_lr") is not None:
      grid[(c["schedule"], c["batch_size"], c["epochs"])].append(
          (r["final_test_accuracy"], c["peak_lr"], c["warmup_fraction"]))
    else:
      cand[(r["name"], c["schedule"])][(c["batch_size"], c["epochs"],
                                        c["seed"])] = r
  out = []
  out.append("### Grid references (best cell, seed 0, picked on test)\n")
  best, rows = {}, []
  for k in sorted(grid):
    acc, p, w = max(grid[k])
    best[k] = acc
    rows.append([k[0], f"B{k[1]}/E{k[2]}", f"{acc:.4f}", f"{p:.4g}", w,
                 ", ".join(f"{a:.4f}@{pp:.3g}/{ww}" for a, pp, ww in
                           sorted(grid[k], key=lambda t: (t[1], t[2])))])
  out += report.table(["optimizer", "case", "best acc", "peak LR",
                       "warmup frac", "cells"], rows)
  names = sorted({n for n, _ in cand})
  out.append("\n### Summary: mean over seeds (n seeds) - grid best, in pp; "
             "worst seed in brackets\n")
  rows = []
  for sched in ("autowu_lamb", "autowu_adamp"):
    for b, e in CASES:
      g = best.get((sched.replace("autowu", "warmup_cosine"), b, e))
      if g is None:
        continue
      cells = []
      any_run = False
      for n in names:
        rs = [r for k, r in sorted(cand.get((n, sched), {}).items())
              if k[:2] == (b, e)]
        if not rs:
          cells.append("-")
          continue
        any_run = True
        a = np.array([r["final_test_accuracy"] for r in rs])
        cells.append(f"{a.mean():.4f} ({len(a)}) {100 * (a.mean() - g):+.2f} "
                     f"[{100 * (a.min() - g):+.2f}]")
      if any_run:
        rows.append([sched, f"B{b}/E{e}", f"{g:.4f}", *cells])
  out += report.table(["optimizer", "case", "grid", *names], rows)
  out.append("\n### Candidates: final test accuracy per seed "
             "(switch step, restart LR)\n")
  rows = []
  for (name, sched), runs in sorted(cand.items()):
    keys = sorted({(b, e) for b, e, _ in runs})
    for b, e in keys:
      rs = [runs[k] for k in sorted(runs) if k[:2] == (b, e)]
      accs = np.array([r["final_test_accuracy"] for r in rs])
      g = best.get((sched.replace("autowu", "warmup_cosine"), b, e))
      cells = "; ".join(
          f"s{r['config']['seed']}: {r['final_test_accuracy']:.4f} "
          f"({r['switch_step']}, {r['restart_lr']:.4g}"
          f"{', guard' if r['switch_reason'] == 'divergence guard' else ''})"
          for r in rs)
      gs = f"{g:.4f}" if g else "-"
      gap = f"{100 * (accs.mean() - g):+.2f} pp" if g else "-"
      worst = f"{100 * (accs.min() - g):+.2f} pp" if g else "-"
      rows.append([name, sched, f"B{b}/E{e}", gs, cells,
                   f"{accs.mean():.4f}", gap, worst])
  out += report.table(["candidate", "optimizer", "case", "grid",
                       "seeds: acc (switch, restart LR)", "mean",
                       "gap to grid", "worst seed gap"], rows)
  print("\n".join(out))


if __name__ == "__main__":
  main()
