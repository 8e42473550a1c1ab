"""Interleaved timing of training steps in separate worker processes (standard library only).

On a machine shared with other jobs, timings taken one configuration after another compare the
machine's load as much as the configurations. Here every configuration ("side") is a long-lived
worker process that builds its model, warms up (tracing, compilation) and then waits; the parent
asks the sides in turn for `steps` timed training steps, round after round, reversing the order
every other round (A B C, C B A, A B C, ...), so that a change of load hits every side alike.
Only one side computes at a time; the waiting ones block on their standard input.

Protocol (one JSON object per line): a worker prints {"ready": true, ...info} once warm, then for
each request line "run N" times N steps and prints {"seconds": [...]} (one wall time per step,
each step ending in a host synchronisation); "quit" ends it. serve() is the worker's side.

Used by bench/vdvae_peer.py (TensorFlow and PyTorch in their own processes, so that they do not
fight over threads) and bench/hierarchical_variants.py.
"""
import json
import statistics
import subprocess
import sys
import time


def serve(step, info):
    """The worker's loop: announce `info`, then run `step()` N times per "run N" request."""
    out = sys.stdout
    print(json.dumps({"ready": True, **info}), file=out, flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] == "quit":
            break
        seconds = []
        for _ in range(int(words[1])):
            start = time.perf_counter()
            step()
            seconds.append(time.perf_counter() - start)
        print(json.dumps({"seconds": seconds}), file=out, flush=True)


class Worker:
    def __init__(self, name, argv, env=None, cwd=None):
        self.name = name
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                                        cwd=cwd, text=True, bufsize=1)

    def read(self):
        """The next JSON line of the worker (other output goes to its standard error)."""
        while True:
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError(f"worker {self.name} ended (exit {self.process.wait()})")
            line = line.strip()
            if line.startswith("{"):
                return json.loads(line)

    def run(self, steps):
        self.process.stdin.write(f"run {steps}\n")
        self.process.stdin.flush()
        return self.read()["seconds"]

    def close(self):
        if self.process.poll() is None:
            try:
                self.process.stdin.write("quit\n")
                self.process.stdin.close()
            except BrokenPipeError:
                pass
            self.process.wait(timeout=120)


def round_orders(names, rounds):
    """The order of the sides in each round: as given, then reversed, alternately."""
    return [list(names) if r % 2 == 0 else list(reversed(names)) for r in range(rounds)]


def summarize(seconds_per_round, batch_size):
    """Medians over rounds of one side's per-round mean step time: ms/step and images/s."""
    per_round = [statistics.mean(s) for s in seconds_per_round]
    every_step = [x for s in seconds_per_round for x in s]
    ms = 1e3 * statistics.median(per_round)
    return {"ms_per_step": ms, "images_per_second": batch_size / (ms / 1e3),
            "ms_per_step_rounds": [round(1e3 * x, 1) for x in per_round],
            "ms_per_step_median_of_steps": 1e3 * statistics.median(every_step),
            "ms_per_step_min": 1e3 * min(every_step), "steps": len(every_step)}


def run_interleaved(sides, rounds, steps, log=print):
    """sides: {name: (argv, env or None)}. Starts the workers one at a time (each warms up alone),
    then runs `rounds` rounds of `steps` steps per side. Returns ({name: ready info},
    {name: [per-round lists of step seconds]})."""
    workers, infos = {}, {}
    try:
        for name, (argv, env) in sides.items():
            start = time.perf_counter()
            workers[name] = Worker(name, argv, env)
            infos[name] = workers[name].read()
            log(f"{name}: ready after {time.perf_counter() - start:.0f} s")
        timings = {name: [] for name in sides}
        for r, order in enumerate(round_orders(list(sides), rounds)):
            for name in order:
                timings[name].append(workers[name].run(steps))
            log(f"round {r + 1}/{rounds}: " + ", ".join(
                f"{name} {1e3 * statistics.mean(timings[name][-1]):.0f} ms" for name in sides))
        return infos, timings
    finally:
        for worker in workers.values():
            worker.close()
