"""Which class of work the model step's queue serves next: interactive rows before bulk rows (an indexing
job's), with bulk never starved (issue 20, item 2).

The queue (backend.runtime.scheduler) plans each class's rows into micro-batches of their own, so an
interactive text never rides in a micro-batch of 64 bulk rows (a forward over them takes as long as all 64
together), and asks BulkShare for the next one among its candidates:

- one class waiting: its micro-batch with the highest response ratio, as without classes;
- both waiting: interactive first, except that bulk is owed `bulk_share` of the work (padded tokens, as the
  queue counts cost) run while both wait. A steady stream of interactive videos or long documents thus
  still leaves the index job at least that share of the device; between interactive requests it has all of
  it. The account starts afresh whenever no interactive micro-batch waits, so a bulk job's quiet spells
  earn it no credit to spend later against a burst of queries.

Bulk is marked by the client (backend.protocol.PRIORITY_PARAMETER); Triton's own priority_levels order the
requests in front of each step (model_repository/*/config.pbtxt), this orders the rows inside the model step.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from backend.protocol import BULK_CLASS, PRIORITY_PARAMETER

logger = logging.getLogger(__name__)

Batch = TypeVar("Batch")


def is_bulk_parameters(parameters: str | dict[str, Any] | None) -> bool:
    """Whether a request's parameters (request.parameters(): a JSON object as text) mark it bulk. Anything
    unreadable counts as interactive: the mark only lowers a request's priority, so nothing is refused."""
    if not parameters:
        return False
    if isinstance(parameters, str):
        try:
            parsed = json.loads(parameters)
        except ValueError:
            logger.warning("unreadable request parameters %r: treated as interactive", parameters[:200])
            return False
    else:
        parsed = parameters
    return isinstance(parsed, dict) and parsed.get(PRIORITY_PARAMETER) == BULK_CLASS


class BulkShare:
    """Chooses the next micro-batch: interactive first, bulk owed `share` of the work while both wait.
    Not thread-safe: the queue calls it under its lock."""

    def __init__(self, share: float):
        if not 0.0 < share < 1.0:
            raise ValueError(f"bulk share must be between 0 and 1, got {share}")
        self.share = share
        self.interactive_work = 0  # tokens run for each class since both started waiting
        self.bulk_work = 0

    def choose(
        self,
        candidates: Sequence[Batch],
        is_bulk: Callable[[Batch], bool],
        rank: Callable[[Batch], Any],
        cost: Callable[[Batch], int],
    ) -> Batch:
        """The next of `candidates` (each all bulk or all interactive); within a class the highest `rank`."""
        interactive = [batch for batch in candidates if not is_bulk(batch)]
        bulk = [batch for batch in candidates if is_bulk(batch)]
        if not interactive:
            self.interactive_work = self.bulk_work = 0
            return max(bulk, key=rank)
        if not bulk:
            return max(interactive, key=rank)
        owed = self.share * (self.interactive_work + self.bulk_work) - self.bulk_work
        if owed > 0:
            chosen = max(bulk, key=rank)
            self.bulk_work += cost(chosen)
        else:
            chosen = max(interactive, key=rank)
            self.interactive_work += cost(chosen)
        return chosen
