"""GenerateRequest: what it reads from its body."""
import dataclasses

from velollmd.wire.request import GenerateRequest


def test_model_and_stream_are_the_bodys_and_follow_a_replaced_body():
    request = GenerateRequest("chat", {"model": "m", "stream": 1})
    assert request.model == "m" and request.stream is True
    assert GenerateRequest("chat", {"model": "m"}).stream is False
    replaced = dataclasses.replace(request, body={"model": "n", "stream": False}, client_model="m")
    assert replaced.model == "n" and replaced.stream is False and replaced.echo_model == "m"
    assert dataclasses.replace(request, key_name="k").stream is True
    assert request == GenerateRequest("chat", {"model": "m", "stream": 1})
    assert ", model=" not in repr(request) and "stream=" not in repr(request)
