"""The Optuna proposer: no LLM. It tunes the program's declared knobs (command-line arguments of the script, or of
the trainer for a recipe) with Optuna's ask-and-tell interface and the TPE sampler, and prunes an experiment whose
intermediate metric falls behind the median of the earlier ones at the same step.

The study lives in a journal file in the research directory, so a resumed loop goes on with the same study."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from twinkle_tui.research.program import Knob, Program, format_knob_value
from twinkle_tui.research.proposal import Context, Proposal, ProposerError

log = logging.getLogger(__name__)

STARTUP_TRIALS = 4  # random trials before TPE models the search: a handful of experiments is the normal budget
PRUNE_STARTUP = 2  # complete trials before the pruner judges anyone


def distribution(knob: Knob) -> Any:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if knob.kind == "choice":
        return CategoricalDistribution(list(knob.choices))
    if knob.kind in ("int", "logint"):
        return IntDistribution(int(knob.low), int(knob.high), log=knob.kind == "logint")
    return FloatDistribution(knob.low, knob.high, log=knob.kind == "loguniform")


class OptunaProposer:
    name = "optuna"

    def __init__(self, program: Program, journal: Path, lanes: int = 1, seed: int = 0) -> None:
        if not program.knobs:
            raise ProposerError(f"{program.path.name} declares no knobs; the optuna proposer tunes knobs "
                                "(knobs: {lr: loguniform(1e-5, 1e-3)}); use --proposer llm for code edits")
        import optuna
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.program = program
        self.distributions = {k.name: distribution(k) for k in program.knobs}
        journal.parent.mkdir(parents=True, exist_ok=True)
        storage = JournalStorage(JournalFileBackend(str(journal)))
        self.study = optuna.create_study(
            study_name=program.name, storage=storage, load_if_exists=True,
            direction="maximize" if program.maximize else "minimize",
            sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=STARTUP_TRIALS,
                                               constant_liar=lanes > 1),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=PRUNE_STARTUP, n_warmup_steps=0))
        self._trials: dict[int, Any] = {}
        self._lock = threading.Lock()

    def propose(self, context: Context) -> Proposal:
        with self._lock:
            trial = self.study.ask(self.distributions)
            self._trials[trial.number] = trial
        params = dict(trial.params)
        shown = ", ".join(f"{k}={format_knob_value(v)}" for k, v in params.items())
        return Proposal(f"optuna trial {trial.number}: {shown}", params=params, trial=trial.number)

    def refused(self, experiment: str, reason: str) -> None:
        log.warning("an optuna proposal was refused: %s", reason)

    def report(self, proposal: Proposal, step: int, value: float) -> bool:
        """Report an intermediate value; True when the experiment should be pruned."""
        trial = self._trial(proposal)
        if trial is None:
            return False
        with self._lock:
            try:
                trial.report(float(value), int(step))
                return bool(trial.should_prune())
            except (ValueError, RuntimeError, NotImplementedError) as exc:  # a step reported twice, a finished trial
                log.debug("optuna report skipped: %s", exc)
                return False

    def tell(self, proposal: Proposal, status: str, metric: float | None) -> None:
        from optuna.trial import TrialState

        if proposal.trial is None:
            return
        with self._lock:
            try:
                if status == "pruned":
                    self.study.tell(proposal.trial, state=TrialState.PRUNED)
                elif status in ("keep", "discard") and metric is not None:
                    self.study.tell(proposal.trial, metric)
                else:
                    self.study.tell(proposal.trial, state=TrialState.FAIL)
            except (ValueError, RuntimeError) as exc:  # told already (a resumed loop)
                log.debug("optuna tell skipped: %s", exc)
            self._trials.pop(proposal.trial, None)

    def forget_others(self, keep: set[int]) -> None:
        """After a crash of the loop: trials that were asked but never started running are failed."""
        from optuna.trial import TrialState

        with self._lock:
            for frozen in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                if frozen.number not in keep:
                    self.study.tell(frozen.number, state=TrialState.FAIL)

    def _trial(self, proposal: Proposal) -> Any:
        if proposal.trial is None:
            return None
        with self._lock:
            trial = self._trials.get(proposal.trial)
            if trial is None:  # a resumed loop: the trial was asked by the loop that died
                import optuna

                frozen = next((t for t in self.study.get_trials(deepcopy=False) if t.number == proposal.trial), None)
                if frozen is None:
                    return None
                trial = self._trials[proposal.trial] = optuna.trial.Trial(self.study, frozen._trial_id)
            return trial
