"""Random ``kill -9`` soak: kill real recording processes at random moments, resume, check.

    python benchmarks/kill_soak.py [--kills 50] [--mode default|compact|both] [--train]
        [--train-kills 10] [--seed 0]

Each kind of process is killed again and again, the same recording resumed after each kill:

- the recorder alone, in each mode, at [4000, 64] and the notebook's [50257, 64] bf16 (over
  the 16 KiB small-field limit: one and four chunks a step, deltas in compact mode). A
  writer process prints each step once ``record()`` returned and is killed a random
  0..0.5 s after a random 1..12 printed steps. After each kill the committed steps are at
  least those printed minus queue_size + 1 (what FORMAT.md says a kill may lose), the new
  ones are bit-exact (steps are functions of their number), and a resumed recorder records
  more.
- with ``--train``, ``wordybird train`` (40 tiny steps, a checkpoint every 5), killed a random
  moment into its run and continued by ``train --resume`` (started over when it has no
  checkpoint yet). After each kill the recording reaches the last checkpoint and its every
  step equals an uninterrupted run's, bit-exact; so does the finished run, every step.

The kills and checks are the test suite's own (``kill_resume_and_check`` in
tests/test_recorder.py, ``kill_train_and_check`` in tests/test_training_cli.py, whose slow
tests run 50 and 10 kills): this script runs as many as asked and reports. It prints the
kills survived and tried per kind, and exits with 1 if any check failed (the work folder is
then kept for a look).
"""

from __future__ import annotations

import argparse
import math
import random
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from test_recorder import KILL_JITTER, KILL_QUEUE_SIZE, kill_resume_and_check, random_kills
from test_training_cli import (
    finish_and_check,
    kill_train_and_check,
    reference_run,
    write_corpus,
)

#: Recorder step shapes: one chunk a step, and the notebook's (4 chunks a step).
SHAPES = [(4000, 64), (50257, 64)]


@dataclass
class Tally:
    """One kind of process: the kills it survived, and the first failed check."""

    kind: str
    survived: int = 0
    lost: list[int] = field(default_factory=list)  # per kill: printed steps not committed
    failure: str | None = None
    failed_after_kills: bool = False  # the failure came in a final check, not at a kill

    @property
    def tried(self) -> int:
        return self.survived + (self.failure is not None and not self.failed_after_kills)

    def report(self, detail: str) -> str:
        line = f"{self.kind}: {self.survived}/{self.tried} kills survived{detail}"
        return line if self.failure is None else f"{line}\n  FAILED: {self.failure}"


def soak_recorder(folder: Path, mode: str, vocab: int, dim: int, kills: int, seed: int) -> Tally:
    """Kill a recording writer ``kills`` times, resuming one store."""
    tally = Tally(f"recorder, {mode} mode, [{vocab}, {dim}] bf16")
    folder.mkdir()
    kill_after, rng = random_kills(seed, kills)
    try:
        for after in kill_after:
            tally.lost += kill_resume_and_check(
                folder, mode, vocab, dim, [after], jitter=KILL_JITTER, rng=rng
            )
            tally.survived += 1
            print(f"  {tally.kind}: kill {tally.survived}, lost {tally.lost[-1]}", flush=True)
    except Exception as exc:  # a failed check, or one that could not even read the run
        tally.failure = repr(exc)
    return tally


def soak_train(folder: Path, mode: str, kills: int, seed: int) -> Tally:
    """Kill `wordybird train` ``kills`` times in one run folder, then let it finish."""
    tally = Tally(f"wordybird train, {mode} mode")
    folder.mkdir()
    corpus, reference, run = write_corpus(folder / "corpus.txt"), folder / "ref", folder / "run"
    window = reference_run(reference, corpus, mode)
    rng = random.Random(seed)
    try:
        while tally.survived < kills:
            if kill_train_and_check(run, reference, corpus, mode, rng.uniform(0, window)):
                tally.survived += 1
                print(f"  {tally.kind}: kill {tally.survived}", flush=True)
        tally.failed_after_kills = True
        finish_and_check(run, reference, corpus, mode)
    except Exception as exc:  # a failed check, or one that could not even read the run
        tally.failure = repr(exc)
    return tally


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=50, help="recorder kills in all")
    parser.add_argument("--mode", choices=["default", "compact", "both"], default="both")
    parser.add_argument("--train", action="store_true", help="also kill `wordybird train`")
    parser.add_argument("--train-kills", type=int, default=10, help="per mode")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    modes = ["default", "compact"] if args.mode == "both" else [args.mode]
    root = Path(tempfile.mkdtemp(prefix="kill-soak-"))
    per_case = math.ceil(args.kills / (len(modes) * len(SHAPES)))
    tallies = []
    for case, (mode, (vocab, dim)) in enumerate((m, s) for m in modes for s in SHAPES):
        folder = root / f"{mode}-{vocab}"
        tally = soak_recorder(folder, mode, vocab, dim, per_case, args.seed + case)
        tallies.append(tally)
        lost = max(tally.lost, default=0)
        beyond = sum(max(0, n - (KILL_QUEUE_SIZE + 1)) for n in tally.lost)
        print(
            tally.report(
                f"; printed steps not committed: {sum(tally.lost)} in all, at most {lost} at "
                f"a kill (bound {KILL_QUEUE_SIZE + 1}), {beyond} beyond the bound"
            ),
            flush=True,
        )
    if args.train:
        for case, mode in enumerate(modes):
            tally = soak_train(root / f"train-{mode}", mode, args.train_kills, args.seed + case)
            tallies.append(tally)
            print(
                tally.report(
                    "; the recording reached the last checkpoint after each kill, and the "
                    "finished run equals the uninterrupted one bit-exact"
                ),
                flush=True,
            )
    failed = sum(t.failure is not None for t in tallies)
    tried, survived = sum(t.tried for t in tallies), sum(t.survived for t in tallies)
    print(f"in all: {survived}/{tried} kills survived, ", end="")
    if failed:
        print(f"{failed} check(s) failed (above); the work folder is kept: {root}")
        return 1
    print("no committed step lost beyond the bound")
    shutil.rmtree(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
