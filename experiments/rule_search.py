"""Runs the AutoWU decision-rule search (issue 12): cached, sequential runs.

Usage: python -m experiments.rule_search QUEUE.json [OUT.jsonl]
QUEUE.json: list of {"name", "schedule", "batch_size", "epochs", "seed",
"peak_lr", "warmup_fraction", "autowu": {extra autowu kwargs}}.
Each result row is keyed by its config; rows already in OUT are skipped.
Warmup traces (per-step loss and LR up to the switch + 20 steps) are kept.
"""
import json
import sys
import time
from pathlib import Path

from experiments import data as data_lib
from experiments import train as train_lib


def key_of(c):
  k = {x: c.get(x) for x in ("schedule", "batch_size", "epochs", "seed",
                             "peak_lr", "warmup_fraction", "weight_decay")}
  k["autowu"] = c.get("autowu") or {}
  return json.dumps(k, sort_keys=True)


def main():
  queue = json.load(open(sys.argv[1]))
  out = Path(sys.argv[2] if len(sys.argv) > 2 else
             "experiments/results/rule_search_runs.jsonl")
  done = set()
  if out.exists():
    done = {json.loads(l)["key"] for l in out.open() if l.strip()}
  dataset = data_lib.load_dataset("fashion_mnist", None, None)
  for c in queue:
    k = key_of(c)
    if k in done:
      continue
    extra = {k: v for k, v in (c.get("autowu") or {}).items() if not k.startswith("_")}
    cfg = dict(schedule=c["schedule"], batch_size=c["batch_size"],
               epochs=c["epochs"], seed=c["seed"], plot=False, autowu=extra,
               tensorboard=False, quiet=True,
               out_dir=f"/tmp/r12/run_{abs(hash(k)) % 10**10}")
    if c.get("weight_decay") is not None:
      cfg["weight_decay"] = c["weight_decay"]
    if c.get("peak_lr") is not None:
      cfg["peak_lr"] = c["peak_lr"]
      cfg["warmup_fraction"] = c["warmup_fraction"]
    t0 = time.time()
    s = train_lib.run(cfg, dataset=dataset)
    h = s.pop("history", {})
    sw = s.get("switch_step")
    trace = None
    if sw is not None:
      n = sw + 20
      trace = {"loss": h["loss"][:n], "lr": h["lr"][:n]}
    row = {"key": k, "name": c.get("name"), "config": c,
           "final_test_accuracy": s["final_test_accuracy"],
           "switch_step": sw, "restart_lr": s.get("restart_lr"),
           "switch_reason": s.get("switch_reason"),
           "total_steps": s["total_steps"],
           "steps_per_epoch": s["steps_per_epoch"],
           "acc_per_epoch": s["test_accuracy_per_epoch"],
           "elapsed_s": time.time() - t0,
           "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
           "trace": trace}
    with out.open("a") as f:
      f.write(json.dumps(row) + "\n")
    print(c.get("name"), c["batch_size"], c["epochs"], c["seed"],
          s["final_test_accuracy"], sw, s.get("restart_lr"),
          f"{time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
  main()
