"""What a backend's answer must look like: the 502 that names what is wrong."""
import pytest

from velollmd.errors import BackendError
from velollmd.wire.shape import check_answer, check_chunk, check_embeddings

MESSAGE = {"message": {"role": "assistant", "content": "hi"}}


@pytest.mark.parametrize("body,what", [
    ({"choices": []}, "no choices"),
    ({"choices": [MESSAGE, "x"], "usage": 1}, "no choices"),                 # before the usage
    ({"choices": [MESSAGE], "usage": {"prompt_tokens": True}}, "usage is not"),
    ({"choices": [MESSAGE], "usage": {"total_tokens": 1.0}}, "usage is not"),
    ({"choices": [MESSAGE], "usage": []}, "usage is not"),
    ({"choices": [{"message": {"content": 3}}]}, "a choice without a message"),
    ({"choices": [{"message": {"content": None, "tool_calls": {"a": 1}}}]}, "tool_calls is not a list"),
])
def test_a_bad_answer_names_its_first_fault(body, what):
    with pytest.raises(BackendError, match=what):
        check_answer(body, "chat", "b")


def test_good_answers_and_chunks_pass_as_they_are():
    body = {"choices": [MESSAGE, {"message": {"content": None}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}
    assert check_answer(body, "chat", "b") is body
    chunk = {"choices": [], "usage": {"prompt_tokens": 1}}
    assert check_chunk(chunk, "chat", "b") is chunk
    with pytest.raises(BackendError, match="a stream chunk without choices"):
        check_chunk({"choices": [1]}, "chat", "b")
    with pytest.raises(BackendError, match="usage is not"):
        check_chunk({"choices": [], "usage": {"completion_tokens": False}}, "chat", "b")


@pytest.mark.parametrize("body,what", [
    ({"data": [1, 2]}, "no list of embeddings"),
    ({"object": "list"}, "no list of embeddings"),
    ({"data": [{"embedding": "abc"}]}, "not a list of numbers"),
    ({"data": [{"index": 0}]}, "not a list of numbers"),
    ({"data": [{"embedding": [0.5, "x"]}]}, "not a list of numbers"),
    ({"data": [{"embedding": [0.5, True]}]}, "not a list of numbers"),
    ({"data": [{"embedding": [0.5]}], "usage": "lots"}, "usage is not"),
])
def test_bad_embeddings_name_their_fault(body, what):
    with pytest.raises(BackendError, match=what):
        check_embeddings(body, "b")


def test_good_embeddings_pass_as_they_are():
    body = {"data": [{"index": 0, "embedding": [0.5, -1, 0.0]}], "usage": {"prompt_tokens": 2, "total_tokens": 2}}
    assert check_embeddings(body, "b") is body
