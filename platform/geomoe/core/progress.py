"""What a job shows while it runs: one header line and one progress bar per stage (tqdm, on stderr), so that the
results printed on stdout stay readable; the details go to the run's log folder (``geomoe.core.logs``)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from tqdm import tqdm


class StageBar:
    """One stage's bar, moved by ``show`` (a count read from elsewhere: the workers' epochs)."""

    def __init__(self, total: int, bar: tqdm[Any] | None = None) -> None:
        self.total = total
        self.done = 0
        self._bar = bar

    def show(self, done: int) -> None:
        """The bar at ``done`` units (at most its total: a retried epoch is counted twice by its worker)."""
        done = min(done, self.total)
        if done > self.done:
            if self._bar is not None:
                self._bar.update(done - self.done)
            self.done = done


class Progress:
    """The stages of one job, numbered: ``[2/5] prepare``, then on a terminal a live bar with rate and ETA,
    elsewhere (a pipe, a CI log) one line when the stage is done; nothing more when a stage fails."""

    def __init__(self, stages: list[str], enabled: bool = True, stream: TextIO | None = None) -> None:
        self.stages = stages
        self.enabled = enabled
        self.stream = stream or sys.stderr

    @contextmanager
    def stage(self, name: str, total: int = 1, unit: str = "stage", detail: str = "") -> Iterator[StageBar]:
        if not self.enabled:
            yield StageBar(total)
            return
        number = self.stages.index(name) + 1 if name in self.stages else 0
        print(f"[{number}/{len(self.stages)}] {name}" + (f": {detail}" if detail else ""), file=self.stream, flush=True)
        started = time.perf_counter()
        live = tqdm(total=total, unit=unit, file=self.stream, bar_format=BAR) if self.stream.isatty() else None
        bar = StageBar(total, live)
        try:
            yield bar
        except BaseException:
            if live is not None:
                live.leave = False  # the error explains; a bar frozen half-way would not
            raise
        else:
            bar.show(total)
            if live is None:
                took = time.perf_counter() - started
                counted = f"{total} {unit}s in {took:.1f} s, {took / total:.2f} s/{unit}" if total > 1 else ""
                print(f"  done: {counted or f'{took:.1f} s'}", file=self.stream)
        finally:
            if live is not None:
                live.close()


BAR = "  {bar:30} {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}, {rate_fmt}]"
