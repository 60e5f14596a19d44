"""Conversations and the real chat templates they are checked on, shared by the jinja2 oracle
(tests/engine/test_templates.py) and llama-server's /apply-template (tests/backends/test_engine_parity.py).
"""
from __future__ import annotations

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME_TOOL = {"type": "function", "function": {
    "name": "get_time", "description": "Local time",
    "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}}}}


def call(call_id: str, name: str, arguments: str) -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


CONVERSATIONS = {
    "system_user": ([{"role": "system", "content": "You are terse."},
                     {"role": "user", "content": "Hello there"}], None),
    "multi_turn": ([{"role": "system", "content": "  Be kind.\n"},
                    {"role": "user", "content": "Hi!"},
                    {"role": "assistant", "content": " Hello, how can I help? "},
                    {"role": "user", "content": "Tell me about Zürich — schön?"}], None),
    "no_system": ([{"role": "user", "content": "2+2?"},
                   {"role": "assistant", "content": "4"},
                   {"role": "user", "content": "and 3+3?"}], None),
    "content_parts": ([{"role": "user", "content": [{"type": "text", "text": "Part one."},
                                                    {"type": "text", "text": "Part two."}]}], None),
    "tool_round": ([{"role": "system", "content": "Use tools."},
                    {"role": "user", "content": "Weather in Paris?"},
                    {"role": "assistant", "content": None,
                     "tool_calls": [call("call0abcd", "get_weather", '{"city":"Paris"}')]},
                    {"role": "tool", "tool_call_id": "call0abcd", "name": "get_weather",
                     "content": '{"temp_c": 21, "sky": "clear"}'}], [WEATHER_TOOL, TIME_TOOL]),
    "tool_no_system": ([{"role": "user", "content": "Wetter in Köln?"},
                        {"role": "assistant", "content": "",
                         "tool_calls": [call("abcde1234", "get_weather", '{"city": "Köln"}')]},
                        {"role": "tool", "tool_call_id": "abcde1234", "content": "regnerisch"},
                        {"role": "assistant", "content": "Es regnet."},
                        {"role": "user", "content": "Danke"}], [WEATHER_TOOL]),
    "two_calls": ([{"role": "user", "content": "Weather and time in Oslo?"},
                   {"role": "assistant", "content": "Checking both.",
                    "tool_calls": [call("call1abcd", "get_weather", '{"city": "Oslo"}'),
                                   call("call2abcd", "get_time", '{"tz": "Europe/Oslo"}')]},
                   {"role": "tool", "tool_call_id": "call1abcd", "content": "snow"},
                   {"role": "tool", "tool_call_id": "call2abcd", "content": "09:00"}],
                  [WEATHER_TOOL, TIME_TOOL]),
    "tools_no_call": ([{"role": "user", "content": "Just chat."}], [WEATHER_TOOL]),
    "think_last": ([{"role": "user", "content": "Why?"},
                    {"role": "assistant", "content": "<think>\nBecause.\n</think>\n\nIt is so."}], None),
    "think_history": ([{"role": "user", "content": "Q1"},
                       {"role": "assistant", "content": "<think>r1</think>A1"},
                       {"role": "user", "content": "Q2"},
                       {"role": "assistant", "content": "A2", "reasoning_content": "r2"},
                       {"role": "user", "content": "<tool_response>\nx\n</tool_response>"}], None),
}

BASIC = ["system_user", "multi_turn", "no_system", "content_parts"]
TOOLS = ["tool_round", "tool_no_system", "tools_no_call"]
CASES = {
    # fixture: (family, conversations the real template accepts)
    "tiny": ("chatml", BASIC + TOOLS + ["two_calls"]),
    "Qwen-Qwen2.5-7B-Instruct.jinja": ("qwen2", BASIC + TOOLS + ["two_calls"]),
    "Qwen-Qwen3-0.6B.jinja": ("qwen3", BASIC + TOOLS + ["two_calls", "think_last", "think_history"]),
    "meta-llama-Llama-3.3-70B-Instruct.jinja": ("llama3", BASIC + TOOLS),
    "meta-llama-Llama-3.2-3B-Instruct.jinja": ("llama3.2", BASIC + TOOLS),
    "mistralai-Mistral-Nemo-Instruct-2407.jinja": ("mistral", BASIC + TOOLS),
    "google-gemma-2-2b-it.jinja": ("gemma", ["no_system", "content_parts"]),
    "google-gemma-3-it.jinja": ("gemma", BASIC),
    "microsoft-Phi-3.5-mini-instruct.jinja": ("phi3", BASIC + TOOLS),
    "llama-cpp-microsoft-Phi-4-mini-instruct.jinja": ("phi4-mini", BASIC + TOOLS + ["two_calls"]),
    "microsoft-phi-4.jinja": ("phi4", BASIC + TOOLS),
}
