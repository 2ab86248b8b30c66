"""Stability information for stable_reinforce: what the service sampled, recorded when a sampling client asks for
it (record_stability_info), so that training can use the sampler's exact log-probabilities for the tokens a
datum's provenance spans name, instead of the client's copy.

Recorded sequences belong to the session that sampled them and can be trained on for a day after sampling; each
training request that uses one restarts its day (as tinker documents). At most KEEP are kept, oldest out first.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from twinkle_trainer.service.losses import LossError
from twinkle_trainer.service.wire import Datum

DAY = 86400.0
KEEP = 100_000


@dataclass
class Recorded:
    session_id: str
    tokens: np.ndarray  # int64, the sampled tokens
    logprobs: np.ndarray  # float32, the sampler's log-probability of each
    expires: float


class StabilityRecords:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.lock = threading.Lock()
        self.records: OrderedDict[str, Recorded] = OrderedDict()

    def __len__(self) -> int:
        return len(self.records)

    def record(self, session_id: str, sequence_id: str, tokens: list[int], logprobs: list[float]) -> None:
        with self.lock:
            self.records[sequence_id] = Recorded(session_id, np.asarray(tokens, dtype=np.int64),
                                                 np.asarray(logprobs, dtype=np.float32), self.clock() + DAY)
            while len(self.records) > KEEP:
                self.records.popitem(last=False)

    def sampler_logprobs(self, session_id: str, datum: Datum, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(q, mask) for a datum's target positions: the recorded log-probability where its spans name a sampled
        token (mask 1), 0 elsewhere (prompt tokens, mask 0). Refused when a span names a sequence this session did
        not record, or tokens that are not the ones sampled."""
        spans = datum.target_spans or []
        n = sum(s.length for s in spans)
        q, mask = np.zeros(n, dtype=np.float32), np.zeros(n, dtype=np.float32)
        targets = np.asarray(datum.inputs["target_tokens"], dtype=np.int64)
        now, at = self.clock(), 0
        with self.lock:
            for span in spans:
                if span.sampled:
                    rec = self.records.get(span.sequence_id)
                    if rec is None or rec.session_id != session_id or rec.expires < now:
                        raise LossError(f"datum {i}: no stability record of sequence {span.sequence_id!r} in this "
                                        "session (sample with record_stability_info=True; records last a day)")
                    end = span.offset + span.length
                    if end > len(rec.tokens) or not np.array_equal(rec.tokens[span.offset : end],
                                                                   targets[at : at + span.length]):
                        raise LossError(f"datum {i}: the tokens at positions {at}-{at + span.length - 1} are not "
                                        f"those sampled in {span.sequence_id!r} from {span.offset}")
                    q[at : at + span.length] = rec.logprobs[span.offset : end]
                    mask[at : at + span.length] = 1.0
                    rec.expires = now + DAY
                    self.records.move_to_end(span.sequence_id)
                at += span.length
        return q, mask

    def prune(self) -> None:
        now = self.clock()
        with self.lock:
            for key in [k for k, r in self.records.items() if r.expires < now]:
                del self.records[key]

    def drop_session(self, session_id: str) -> None:
        with self.lock:
            for key in [k for k, r in self.records.items() if r.session_id == session_id]:
                del self.records[key]
