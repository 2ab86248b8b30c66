"""The LLM proposer: the agent's endpoint gets the program, the best files and the results so far (structured), and
answers with one call of its tool `propose_experiment`. A refused proposal goes back to it with the reason, in the
same conversation, and it proposes again."""

from __future__ import annotations

import json
import logging
from typing import Any

from twinkle_tui.agent.endpoint import LLMSettings, describe_error
from twinkle_tui.research.proposal import Context, Proposal, ProposerError

log = logging.getLogger(__name__)

TOOL_NAME = "propose_experiment"
PROPOSE_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": TOOL_NAME,
        "description": "Propose one experiment: a one-line description and the full new content of each editable "
                       "file it changes.",
        "parameters": {
            "type": "object",
            "properties": {
                "description": {"type": "string", "description": "what this experiment changes and why, one line"},
                "files": {"type": "object", "additionalProperties": {"type": "string"},
                          "description": "editable path -> the file's full new content"},
            },
            "required": ["description", "files"],
            "additionalProperties": False,
        },
    },
}
MAX_TOKENS = 8192
SYSTEM = """You improve a training program by experiments. Each experiment changes the editable files, runs \
`{target}` for at most {budget:g} seconds, and is judged only by the metric `{metric}` ({goal}), which the harness \
({harness}) computes and logs. The harness may not change, and your code may not mention `{metric}`.

Editable files: {editable}.
An improvement smaller than the run-to-run noise ({noise}) is not kept. Propose one focused change at a time; learn \
from what was tried (kept, discarded, crashed) and from the near misses. Always answer by calling \
{tool} with a short description and the FULL new content of every file you change.

The program, as the human wrote it:
{text}"""


class LLMProposer:
    name = "llm"

    def __init__(self, settings: LLMSettings, client: Any = None, timeout: float = 600.0) -> None:
        self.settings = settings
        if client is None:
            from openai import OpenAI

            client = OpenAI(base_url=settings.base_url, api_key=settings.api_key or "not-needed", timeout=timeout,
                            max_retries=1)
        self.client = client
        self._conversations: dict[str, list[dict[str, Any]]] = {}
        self._call_ids: dict[str, str] = {}  # the last tool call of each conversation, for its refusal

    def propose(self, context: Context) -> Proposal:
        messages = self._conversations.get(context.experiment)
        if messages is None or context.attempt == 1:
            messages = self._conversations[context.experiment] = self._opening(context)
        try:
            response = self.client.chat.completions.create(
                model=self.settings.model, messages=messages, tools=[PROPOSE_TOOL], tool_choice="auto",
                max_tokens=MAX_TOKENS)
        except Exception as exc:
            raise ProposerError(describe_error(exc, self.settings)) from None
        choice = response.choices[0] if response.choices else None
        message = choice.message if choice is not None else None
        calls = [c for c in (getattr(message, "tool_calls", None) or []) if getattr(c, "function", None)]
        call = next((c for c in calls if c.function.name == TOOL_NAME), None)
        if call is None:
            said = (getattr(message, "content", None) or "").strip()
            messages.append({"role": "assistant", "content": said or "(no answer)"})
            quoted = f" (it answered: {said[:120]!r})" if said else ""
            return Proposal("", problem=f"no {TOOL_NAME} call{quoted}")
        messages.append({"role": "assistant", "content": getattr(message, "content", None) or "",
                         "tool_calls": [{"id": call.id or "call_0", "type": "function",
                                         "function": {"name": TOOL_NAME, "arguments": call.function.arguments}}]})
        self._call_ids[context.experiment] = call.id or "call_0"
        return parse_arguments(call.function.arguments)

    def refused(self, experiment: str, reason: str) -> None:
        messages = self._conversations.get(experiment)
        if messages is None:
            return
        text = f"REFUSED: {reason}. Nothing was run. Propose again with {TOOL_NAME}."
        if messages and messages[-1].get("tool_calls") and not self.settings.quirks.tool_results_as_text:
            messages.append({"role": "tool", "tool_call_id": self._call_ids.get(experiment, "call_0"),
                             "content": text})
        else:
            if messages and messages[-1].get("tool_calls"):  # llama.cpp's template drops tool messages
                last = messages.pop()
                call = last["tool_calls"][0]["function"]
                messages.append({"role": "assistant",
                                 "content": f"[called {call['name']}({call['arguments'][:2000]})]"})
            messages.append({"role": "user", "content": text})

    def report(self, proposal: Proposal, step: int, value: float) -> bool:
        return False  # the LLM's experiments run to their end

    def tell(self, proposal: Proposal, status: str, metric: float | None) -> None:
        pass  # it reads the results in the next prompt

    def _opening(self, context: Context) -> list[dict[str, Any]]:
        program = context.program
        system = SYSTEM.format(target=program.target, budget=program.budget, metric=program.metric,
                               goal=program.goal, harness=", ".join(program.harness) or "the evaluation",
                               editable=", ".join(program.editable), noise=f"{context.summary.noise:.4g}",
                               tool=TOOL_NAME, text=program.text or "(no text)")
        files = "\n\n".join(f"=== {path} ===\n{text}" for path, text in context.best_files.items())
        results = json.dumps(context.summary.for_llm(), indent=1)
        user = (f"Experiment {context.experiment}. The best files so far:\n\n{files}\n\n"
                f"Results so far (JSON):\n{results}\n\nPropose the next experiment with {TOOL_NAME}.")
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def parse_arguments(arguments: str | None) -> Proposal:
    """The tool call's arguments as a Proposal; malformed ones become an empty proposal that validation refuses
    with the reason."""
    try:
        data = json.loads(arguments or "{}")
    except ValueError as exc:
        return Proposal("", problem=f"the arguments of {TOOL_NAME} are not valid JSON ({exc})")
    if not isinstance(data, dict):
        return Proposal("", problem=f"the arguments of {TOOL_NAME} must be a JSON object")
    files = data.get("files")
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        return Proposal(str(data.get("description") or ""),
                        problem="files must map each editable path to its full new content (a string)")
    return Proposal(str(data.get("description") or "").strip(), dict(files))
