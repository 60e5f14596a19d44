"""Benchmark workloads: the prompts each profile sends, as chat message lists.

A profile turns (request index, conversation state) into the messages of the next request.
Prompts are made unique per request (a tag at the END of the last user message, so that
prefix caches still see a shared prefix) unless `same_prompts` is set, which sends identical
prompts and so exercises the daemon's response cache on purpose.
`multi-turn` keeps one conversation per worker that grows turn by turn: every request resends
the whole history plus the previous answer, as a chat app does.
"""
from __future__ import annotations

from dataclasses import dataclass, field

WORDS = ("the quick brown fox jumps over a lazy dog while seven wizards quietly judge boxing "
         "matches near old river banks and every morning people walk to work through green "
         "parks under bright sky then read books about history science music and art").split()

MEDIUM_TEXT = " ".join(WORDS * 3)

CODE_SNIPPET = '''def merge_intervals(intervals):
    intervals.sort(key=lambda pair: pair[0])
    merged = []
    for start, end in intervals:
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return merged
'''

FOLLOW_UPS = ("Can you explain that in more detail?", "Give me a concrete example.",
              "What are the trade-offs?", "Summarise everything so far in two sentences.")

DEFAULT_CHARS_PER_TOKEN = 3.0   # conservative guess (English BPE gives 3.5-4.5) when not measured
TEMPLATE_TOKENS = 64            # room for the chat template and the instruction around the text
CONTEXT_FILL = 0.9              # use this share of what is left for the document


@dataclass(frozen=True)
class Profile:
    name: str
    max_tokens: int
    description: str


PROFILES = {p.name: p for p in (
    Profile("short", 64, "one short question"),
    Profile("medium", 256, "a paragraph to summarise"),
    Profile("code", 256, "explain and improve a Python function"),
    Profile("long-context", 128, "a long synthetic document up to --max-context"),
    Profile("multi-turn", 128, "conversations that grow turn by turn"),
)}


@dataclass
class Conversation:
    """One worker's multi-turn state: the messages so far and how many turns were sent."""
    messages: list[dict] = field(default_factory=list)
    num_turns: int = 0


@dataclass(frozen=True)
class Workload:
    profile: Profile
    max_tokens: int
    max_context: int = 4096
    num_turns: int = 4
    same_prompts: bool = False
    tag: str = ""            # distinguishes runs so that no two runs share a prompt
    chars_per_token: float = DEFAULT_CHARS_PER_TOKEN     # the endpoint's tokenizer, measured

    def messages(self, request_index: int, conversation: Conversation | None = None) -> list[dict]:
        """The messages of request `request_index` (advances `conversation` for multi-turn)."""
        if self.profile.name == "multi-turn":
            return self._next_turn(request_index, conversation or Conversation())
        return [{"role": "user", "content": self._single_prompt() + self._nonce(request_index)}]

    def _nonce(self, request_index: int) -> str:
        return "" if self.same_prompts else f"\n(request {self.tag}{request_index})"

    def _single_prompt(self) -> str:
        name = self.profile.name
        if name == "short":
            return "Say hello in one short sentence."
        if name == "medium":
            return f"Summarise the following text in a few sentences:\n\n{MEDIUM_TEXT}"
        if name == "code":
            return f"Explain what this function does, then make it faster:\n\n{CODE_SNIPPET}"
        return "Read this document, then list its five most frequent words:\n\n" + self.long_text()

    def long_text(self) -> str:
        """Synthetic text that fits in max_context with room for the answer."""
        return synthetic_text(self.long_text_tokens() * self.chars_per_token)

    def long_text_tokens(self) -> int:
        return max(int((self.max_context - self.max_tokens - TEMPLATE_TOKENS) * CONTEXT_FILL), 16)

    def _next_turn(self, request_index: int, conv: Conversation) -> list[dict]:
        if conv.num_turns >= self.num_turns or not conv.messages:
            conv.messages = [{"role": "system", "content": "You are a helpful assistant."},
                             {"role": "user", "content": "Tell me about rivers." + self._nonce(request_index)}]
            conv.num_turns = 0
        else:
            conv.messages.append({"role": "user", "content": FOLLOW_UPS[(conv.num_turns - 1) % len(FOLLOW_UPS)]})
        conv.num_turns += 1
        return list(conv.messages)

    @staticmethod
    def record_answer(conversation: Conversation | None, text: str) -> None:
        """Append the assistant's answer so that the next turn resends it (multi-turn only)."""
        if conversation is not None and conversation.messages:
            conversation.messages.append({"role": "assistant", "content": text})


def synthetic_text(num_chars: float) -> str:
    """About `num_chars` characters of words, cut at a word boundary."""
    num_chars = int(num_chars)
    text = " ".join(WORDS * (num_chars // len(" ".join(WORDS)) + 1))
    return text[:num_chars].rsplit(" ", 1)[0]
