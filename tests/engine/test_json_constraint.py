"""JSON mode: the recogniser against valid and invalid prefixes, the full mask against checking
every token, and the sampler against a brute-force masked argmax / distribution."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from velollmd.engine.json_constraint import (
    INITIAL,
    MAX_DECIMAL_EXPONENT,
    MAX_DIGITS,
    MAX_WHITESPACE_RUN,
    JsonConstraint,
    JsonVocab,
    feed,
    initial_state,
    is_complete,
)
from velollmd.engine.json_schema import compile_schema
from velollmd.engine import sampling
from velollmd.engine.sampling import Sampler, SamplingParamError, SamplingParams
from velollmd.engine.tokenizer import TokenAttr, Tokenizer

COMPLETE = [
    '{}', '{"a":1}', ' { "a" : [ 1 , -0.5e+3 , 0 , 2E-7 , 10.25 ] }', '{"s":"tab\\t \\"q\\" \\\\ \\/ \\u00e9\\uD83D"}',
    '{"n":null,"t":true,"f":false,"o":{"p":{"q":[]}},"e":[{}]}', '{"é€😀":"ü"}', '{"":""}',
    '{"neg":-0,"x":[-1.0e10]}',
]
PREFIXES = ['', ' ', '{', '{"', '{"a', '{"a"', '{"a":', '{"a":-', '{"a":-0', '{"a":-0.', '{"a":1e', '{"a":1e+',
            '{"a":t', '{"a":fals', '{"a":"\\', '{"a":"\\u00', '{"a":[', '{"a":[1,', '{"a":{"b":[[',
            b'{"a":"\xe2\x82']
INVALID = ['[]', '1', '"a"', '{,', '{"a" 1', '{"a":01', '{"a":1.}', '{"a":.5}', '{"a":-}', '{"a":1e}', '{"a":+1}',
           '{"a":tru }', '{"a":True}', '{"a":"\\x"}', '{"a":"\\u12g4"}', '{"a":"line\nbreak"}', '{"a":1,}',
           '{"a":[1,]}', '{"a":[1}', '{"a":1]', '{}}', '{} {}', '{"a":1 2}', "{'a':1}", '{"a":NaN}']


def fed(text: str | bytes):
    return feed(INITIAL, text if isinstance(text, bytes) else text.encode())


@pytest.mark.parametrize("text", COMPLETE)
def test_complete_objects_are_complete_and_every_prefix_is_valid(text):
    data = text.encode()
    assert is_complete(fed(data)) and isinstance(json.loads(text), dict)
    for end in range(len(data)):
        state = fed(data[:end])
        assert state is not None, data[:end]
        assert not is_complete(state)


@pytest.mark.parametrize("text", PREFIXES)
def test_prefixes_are_valid_but_not_complete(text):
    state = fed(text)
    assert state is not None and not is_complete(state)


@pytest.mark.parametrize("text", INVALID)
def test_invalid_texts_are_rejected(text):
    assert fed(text) is None


@pytest.mark.parametrize("data", [b'{"a":"\xc0\xaf"}', b'{"a":"\xed\xa0\x80"}', b'{"a":"\xe0\x80\x80"}',
                                  b'{"a":"\xf4\x90\x80\x80"}', b'{"a":"\x80"}', b'{"a":"\xe2\x82"}'])
def test_strings_hold_well_formed_utf8_only(data):
    assert fed(data) is None


def test_digit_runs_are_bounded_so_a_number_ends():
    digits = "1" * MAX_DIGITS
    assert is_complete(fed(f'{{"a":-{digits}.{digits}e+{MAX_DECIMAL_EXPONENT - MAX_DIGITS}}}'))
    for number in ("1" + digits, f"1.{digits}1", "1e0001", f"-{digits}1"):
        assert fed(f'{{"a":{number}') is None, number


def admitted(number: str) -> bool:
    state = fed(f'{{"a":{number}}}')
    return state is not None and is_complete(state)


def test_every_number_admitted_is_a_finite_double():
    """The largest mantissas of every integer length, with the exponents around the bound, and
    random numbers: whatever the recogniser takes, Python reads as a finite float."""
    rng = np.random.default_rng(0)
    numbers = [f"{'9' * n}.{'9' * MAX_DIGITS}e+{x}" for n in range(1, MAX_DIGITS + 1) for x in range(280, 320)]
    numbers += [f"0.{'9' * MAX_DIGITS}e{x}" for x in range(300, 1000)]
    numbers += [f"{rng.integers(1, 10 ** 9)}.{rng.integers(0, 10 ** 6)}e{rng.choice(['', '+', '-'])}"
                f"{rng.integers(0, 1000):0{rng.integers(1, 4)}d}" for _ in range(2000)]
    taken = [n for n in numbers if admitted(n)]
    assert f"9.{'9' * MAX_DIGITS}e+307" in taken and len(taken) > 1000       # up to the bound
    assert all(math.isfinite(json.loads(f'{{"a":{n}}}')["a"]) for n in taken)


@pytest.mark.parametrize("number, taken", [
    ("1e307", True), ("9.9e307", True), ("0.9e308", True), ("1e-999", True), ("-1e-5", True), ("12e306", True),
    ("1e308", False), ("1e309", False), ("12e307", False), ("1e9999999", False), ("1e-1000", False),
    ("0.5e309", False), ("1" * MAX_DIGITS + "e293", False), ("1" * MAX_DIGITS + "e292", True)])
def test_exponents_are_bounded_where_the_number_would_overflow(number, taken):
    assert admitted(number) is taken, number


def test_an_integer_schema_admits_no_fraction_nor_exponent():
    root = compile_schema({"type": "object", "properties": {"n": {"type": "integer"}}})
    assert is_complete(feed(initial_state(root), b'{"n":-120}'))
    for text in (b'{"n":1.0', b'{"n":1e3', b'{"n":1E', b'{"n":-0.', b'{"n":1' + b"0" * MAX_DIGITS):
        assert feed(initial_state(root), text) is None, text


def test_whitespace_runs_are_bounded_so_the_end_comes():
    assert fed("\n" * MAX_WHITESPACE_RUN + "{" + " " * MAX_WHITESPACE_RUN + "}") is not None
    assert fed("{" + " " * (MAX_WHITESPACE_RUN + 1)) is None
    assert fed("{}" + " ") is None                              # complete: only the end comes
    assert fed('{"a":"' + " " * 100 + '"}') is not None          # inside a string: content


# ---- a tiny real vocabulary ---------------------------------------------------------------------

PIECES = ['{', '}', '[', ']', '"', ':', ',', '▁', '▁{', '▁"', '":', '",', '"}', '"]', '},', '}}', 'a', 'b', 'ab',
          '▁a', 'x▁y', '1', '0', '-', '.', 'e', '+', '12', '0.5', 'E', 'true', 'false', 'null', 'tr', 'ue', 'nu',
          'l', '\\', '\\n', '\\u', '00e9', 'é', '€', '":"', '":1', '":[', ',"', '▁▁', '▁▁▁▁']
BYTES = [0x0A, 0x09, 0xE2, 0x82, 0xAC, 0x22]


def tiny_tokenizer() -> Tokenizer:
    tokens = ["<unk>", "<s>", "</s>", "<|im_end|>", "<unused>"] + PIECES + [f"<0x{b:02X}>" for b in BYTES]
    attrs = ([TokenAttr.UNKNOWN, TokenAttr.CONTROL, TokenAttr.CONTROL, TokenAttr.CONTROL, TokenAttr.UNUSED]
             + [TokenAttr.NORMAL] * len(PIECES) + [TokenAttr.BYTE] * len(BYTES))
    return Tokenizer(model="llama", pre="default", tokens=tokens, scores=[0.0] * len(tokens), attrs=attrs,
                     merges=(), special_ids={"unk": 0, "bos": 1, "eos": 2}, add_bos=True, add_eos=False,
                     add_space_prefix=True)


TOKENIZER = tiny_tokenizer()
VOCAB = TOKENIZER.vocab_size + 3                   # the model's rows may outnumber the tokens
END_IDS = tuple(sorted(TOKENIZER.eog_ids))


def json_params(**kwargs) -> SamplingParams:
    return SamplingParams(json_mode=True, stop_token_ids=END_IDS, **kwargs)


def reference_allowed(text: bytes) -> np.ndarray:
    """(vocab,) bool from scratch: each token's bytes appended to the whole text, fed anew."""
    allowed = np.zeros(VOCAB, bool)
    for token_id in range(TOKENIZER.vocab_size):
        if token_id in END_IDS:
            allowed[token_id] = is_complete(fed(text))
        elif not TOKENIZER.is_special(token_id) and TOKENIZER.token_bytes(token_id):
            allowed[token_id] = fed(text + TOKENIZER.token_bytes(token_id)) is not None
    return allowed


def test_special_unused_and_missing_tokens_are_never_allowed_and_eos_only_at_the_end():
    vocab = JsonVocab(TOKENIZER, VOCAB)
    constraint = JsonConstraint(vocab, END_IDS)
    assert END_IDS == (2, 3)
    allowed = constraint.mask()
    assert not allowed[[0, 1, 2, 3, 4, VOCAB - 1]].any() and allowed[TOKENIZER.piece_to_id("{")]
    for piece in ("{", "}"):
        constraint.advance(TOKENIZER.piece_to_id(piece))
    assert constraint.complete and constraint.mask()[[2, 3]].all()
    assert constraint.allows(2) and constraint.mask().sum() == len(END_IDS)


@pytest.mark.parametrize("text", ['', '{', '{"', '{"a', '{"a"', '{"a":', '{"a":-', '{"a":1', '{"a":"\\', '{"a":"\\u',
                                  '{"a":"\xe2', '{"a":[', '{"a":[1', '{"a":tr', '{}', '{ '])
def test_the_full_mask_is_every_token_checked_one_by_one(text):
    constraint = JsonConstraint(JsonVocab(TOKENIZER, VOCAB), END_IDS)
    constraint.state = fed(text.encode("latin-1"))
    expected = reference_allowed(text.encode("latin-1"))
    assert np.array_equal(constraint.mask(), expected)
    assert [constraint.allows(t) for t in range(TOKENIZER.vocab_size)] == expected[:TOKENIZER.vocab_size].tolist()


def generate(sampler: Sampler, rng: np.random.Generator, steps: int, brute: bool) -> tuple[list[int], bytes]:
    """Tokens from random logits; `brute`: the masked argmax computed from scratch instead."""
    tokens, text = [], b""
    for _ in range(steps):
        logits = rng.normal(size=VOCAB).astype(np.float32) * 3                 # (vocab,)
        logits[rng.integers(0, VOCAB, 4)] = logits.max()                       # ties
        if brute:
            allowed = reference_allowed(text)
            ids = np.flatnonzero(allowed)
            token_id = int(ids[np.argmax(logits[ids])])
        else:
            token_id = sampler.sample(logits, []).token_id
        tokens.append(token_id)
        if token_id in END_IDS:
            break
        text += TOKENIZER.token_bytes(token_id)
    return tokens, text


@pytest.mark.parametrize("max_rejections", [sampling.MAX_REJECTIONS, 1])     # 1: the full mask at most steps
@pytest.mark.parametrize("seed", range(6))
def test_greedy_json_is_the_argmax_of_the_masked_logits(seed, max_rejections, monkeypatch):
    monkeypatch.setattr(sampling, "MAX_REJECTIONS", max_rejections)
    vocab = JsonVocab(TOKENIZER, VOCAB)
    sampler = Sampler(json_params(temperature=0), VOCAB, json_vocab=vocab)
    fast = generate(sampler, np.random.default_rng(seed), 60, False)
    brute = generate(None, np.random.default_rng(seed), 60, True)
    assert fast == brute
    tokens, text = fast
    if tokens[-1] in END_IDS:
        assert isinstance(json.loads(text), dict)


@pytest.mark.parametrize("max_rejections", [sampling.MAX_REJECTIONS, 1])     # 1: drawn from the full mask
def test_sampling_draws_from_the_masked_distribution(max_rejections, monkeypatch):
    """After '{"a":' the allowed tokens are the value starts: their drawn frequencies follow the
    sampler's probabilities restricted to them (a fixed seed: no flake)."""
    monkeypatch.setattr(sampling, "MAX_REJECTIONS", max_rejections)
    vocab = JsonVocab(TOKENIZER, VOCAB)
    logits = np.random.default_rng(3).normal(size=VOCAB).astype(np.float32)     # (vocab,)
    allowed = reference_allowed(b'{"a":')
    probs = np.where(allowed, np.exp(logits - logits.max()), 0)
    probs /= probs.sum()
    counts = np.zeros(VOCAB, np.int64)
    sampler = Sampler(json_params(temperature=1.0, seed=11), VOCAB, json_vocab=vocab)
    for _ in range(3000):
        sampler.constraint.state = fed('{"a":')
        counts[sampler.sample(logits, []).token_id] += 1
    assert counts[~allowed].sum() == 0
    seen = probs > 0
    expected = counts.sum() * probs[seen]
    chi = float(((counts[seen] - expected) ** 2 / expected).sum())
    assert chi < 2 * seen.sum() + 30                    # df = allowed - 1; far below a biased draw's value


@pytest.mark.parametrize("kwargs", [dict(temperature=0.8), dict(temperature=1.5, top_k=3),
                                    dict(temperature=1.0, top_p=0.2), dict(temperature=1.0, min_p=0.5)])
def test_sampling_with_a_seed_is_reproducible_and_always_a_json_prefix(kwargs):
    vocab = JsonVocab(TOKENIZER, VOCAB)
    runs = []
    for _ in range(2):
        sampler = Sampler(json_params(seed=5, **kwargs), VOCAB, json_vocab=vocab)
        runs.append(generate(sampler, np.random.default_rng(0), 80, False))
    assert runs[0] == runs[1]
    tokens, text = runs[0]
    assert fed(text) is not None and all(t not in END_IDS for t in tokens[:-1])
    if tokens[-1] in END_IDS:
        assert isinstance(json.loads(text), dict)


def test_json_mode_comes_from_response_format_and_needs_an_end_token():
    body = {"response_format": {"type": "json_object"}}
    assert SamplingParams.from_request(body, eos_token_ids=(2,)).json_mode
    assert not SamplingParams.from_request({"response_format": {"type": "text"}}, eos_token_ids=(2,)).json_mode
    with pytest.raises(SamplingParamError) as info:
        SamplingParams.from_request({**body, "ignore_eos": True}, eos_token_ids=(2,))
    assert info.value.param == "response_format"


# ---- JSON schemas -------------------------------------------------------------------------------

SCHEMA = {"type": "object", "title": "answer", "properties": {
    "name": {"type": "string"}, "age": {"type": "integer"}, "score": {"type": "number"},
    "ok": {"type": "boolean"}, "tags": {"type": "array", "items": {"type": "string"}},
    "kind": {"enum": ["a", "ab", 1, 12, None]}, "pos": {"type": "object", "properties": {"x": {"const": -1}}},
    "any": {}, "nothing": {"type": "null"}}, "required": ["name"], "additionalProperties": False}
GOOD = ['{"name":"bo","age":-3,"score":1.5e2,"ok":true,"tags":[],"kind":"ab","pos":{"x":-1},"any":[1,{"q":null}],'
        '"nothing":null}',
        '{ "name" : "" , "age":0,"score":-0,"ok":false,"tags":["x","y"],"kind":12,"pos":{"x":-1},"any":{},'
        '"nothing":null}',
        '{"name":"\\u00e9","age":7,"score":3,"ok":true,"tags":[""],"kind":null,"pos":{"x":-1},"any":"s",'
        '"nothing":null}']
BAD = ['{}', '{"age":1', '{"name":1', '{"name":"a","name"', '{"name":"a","age":1.5', '{"name":"a","age":1e3',
       '{"name":"a","age":1,"score":"1"', '{"name":"a","age":1,"score":1,"ok":null', '{"name":"a","age":1,"score":1,'
       '"ok":true,"tags":[1', '{"name":"a","age":1,"score":1,"ok":true,"tags":[],"kind":"b"',
       '{"name":"a","age":1,"score":1,"ok":true,"tags":[],"kind":123', '{"name":"a"}',
       '{"name":"a","age":1,"score":1,"ok":true,"tags":[],"kind":1,"pos":{}', GOOD[0][:-1] + ',"more":1}']


def schema_fed(text: str):
    return feed(initial_state(compile_schema(SCHEMA)), text.encode())


def test_a_schema_takes_its_objects_whole_and_rejects_the_rest():
    for text in GOOD:
        assert is_complete(schema_fed(text)) and list(json.loads(text)) == list(SCHEMA["properties"])
        assert all(not is_complete(schema_fed(text[:end])) for end in range(len(text)))
    for text in BAD:
        assert schema_fed(text) is None, text


def one_property(schema: dict, **root) -> dict:
    return {"type": "object", "properties": {"a": schema}, **root}


@pytest.mark.parametrize("schema, keyword", [
    (one_property({"type": "string", "pattern": "x+"}), "pattern"),
    (one_property({"type": "string", "format": "date-time"}), "format"),
    (one_property({"type": "string", "minLength": 1}), "minLength"),
    (one_property({"anyOf": [{"type": "object"}, {"type": "object", "properties": {"b": {}}}]}),
     "schema.properties.a.anyOf: choices that start with the same character"),
    (one_property({"type": ["integer", "number"]}), "same character"),
    (one_property({"anyOf": [{"type": "string"}, {"enum": ["x"]}]}), "same character"),
    (one_property({"anyOf": []}), "non-empty array"), (one_property({"type": []}), "a list of them"),
    (one_property({"allOf": [{"type": "string"}, {"type": "string"}]}), "allOf"),
    (one_property({"$ref": "#/defs/x"}), "schema.properties.a.$ref: only references into"),
    (one_property({"$ref": "#/$defs/X"}), "#/$defs/X is not defined"),
    (one_property({"$ref": "#/$defs/X", "type": "object"}), "'$ref' beside 'type'"),
    (one_property({"$ref": "#/$defs/Node"}, **{"$defs": {"Node": {"type": "object", "properties": {
        "next": {"anyOf": [{"$ref": "#/$defs/Node"}, {"type": "null"}]}}}}}), "recursive"),
    (one_property({"type": "array", "minItems": 2, "maxItems": 1}), "maxItems is below minItems"),
    (one_property({"type": "array", "maxItems": -1}), "maxItems"),
    ({"type": "object", "required": ["b"]}, "required"), ({"type": "array"}, "top level"),
    ({"anyOf": [{"type": "object"}, {"type": "null"}]}, "top level"),
    (one_property({"type": "integer", "enum": ["x"]}), "enum"),
    (one_property({"type": "object", "properties": {"b": {}, "c": {}}, "maxProperties": 1}), "maxProperties is below"),
    (one_property({"type": "object", "maxProperties": "2"}), "schema.properties.a.maxProperties"),
    (one_property({"type": "object", "additionalProperties": {"type": "string", "minLength": 2}}),
     "schema.properties.a.additionalProperties: 'minLength'"),
])
def test_schemas_outside_the_subset_are_refused_by_name(schema, keyword):
    body = {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}
    with pytest.raises(SamplingParamError) as info:
        SamplingParams.from_request(body, eos_token_ids=(2,))
    assert info.value.param == "response_format" and keyword in info.value.reason


SMALL = {"type": "object", "properties": {"a": {"type": "array", "items": {"type": "number"}},
                                          "b": {"enum": [True, "ab", 10]}, "ab": {"type": "string"}}}


@pytest.mark.parametrize("text", ['', '{', '{"', '{"a":', '{"a":[', '{"a":[1', '{"a":[1,0.5],', '{"a":[],"b":1',
                                  '{"a":[],"b":"a', '{"a":[],"b":t', '{"a":[],"b":10,"ab":"x',
                                  '{"a":[],"b":10,"ab":""'])
def test_the_full_mask_under_a_schema_is_every_token_checked(text):
    root = compile_schema(SMALL)
    constraint = JsonConstraint(JsonVocab(TOKENIZER, VOCAB), END_IDS, root)
    constraint.state = feed(initial_state(root), text.encode())
    assert constraint.state is not None
    expected = np.array([constraint.allows(t) for t in range(TOKENIZER.vocab_size)] + [False] * 3)
    data = text.encode()
    for token_id in range(TOKENIZER.vocab_size):       # from scratch, as reference_allowed does
        if token_id not in END_IDS and not TOKENIZER.is_special(token_id) and TOKENIZER.token_bytes(token_id):
            assert expected[token_id] == (feed(initial_state(root), data + TOKENIZER.token_bytes(token_id)) is not None)
    assert np.array_equal(constraint.mask(), expected)


@pytest.mark.parametrize("seed", range(4))
def test_sampling_under_a_schema_writes_objects_of_the_schema(seed):
    root = compile_schema(SMALL)
    body = {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": SMALL}}}
    params = SamplingParams.from_request({**body, "temperature": 1.0, "seed": seed}, eos_token_ids=END_IDS)
    assert params.json_mode and params.json_schema == root
    sampler = Sampler(params, VOCAB, json_vocab=JsonVocab(TOKENIZER, VOCAB))
    tokens, text = generate(sampler, np.random.default_rng(seed), 400, False)
    assert tokens[-1] in END_IDS, text
    value = json.loads(text)
    assert list(value) == ["a", "b", "ab"] and value["b"] in (True, "ab", 10) and isinstance(value["ab"], str)
    assert all(isinstance(x, (int, float)) for x in value["a"])


# ---- what pydantic writes: $defs / $ref, Optional (anyOf with null), enums, consts, list bounds ----

PYDANTIC = {"$defs": {"Pet": {"type": "object", "title": "Pet", "additionalProperties": False, "required": ["kind"],
                              "properties": {"kind": {"$ref": "#/$defs/Kind"}}},
                      "Kind": {"enum": ["cat", "dog"], "title": "Kind", "type": "string"}},
            "type": "object", "title": "Owner", "required": ["pet", "spare", "nick", "mood", "tags", "n"],
            "properties": {"pet": {"$ref": "#/$defs/Pet"},
                           "spare": {"anyOf": [{"$ref": "#/$defs/Pet"}, {"type": "null"}], "default": None},
                           "nick": {"type": ["string", "null"]}, "mood": {"const": "ok", "type": "string"},
                           "tags": {"type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": 2},
                           "n": {"oneOf": [{"type": "integer"}, {"type": "boolean"}, {"allOf": [{"const": None}]}]}}}
PYDANTIC_GOOD = ['{"pet":{"kind":"cat"},"spare":null,"nick":null,"mood":"ok","tags":[1],"n":3}',
                 '{"pet":{"kind":"dog"},"spare":{"kind":"cat"},"nick":"x","mood":"ok","tags":[1,2.5],"n":true}',
                 '{"pet":{"kind":"dog"},"spare":null,"nick":"","mood":"ok","tags":[ 0 , -1 ],"n":null}']
PYDANTIC_BAD = ['{"pet":{"kind":"bird"', '{"pet":{}', '{"pet":null', '{"pet":{"kind":"cat"},"spare":1',
                '{"pet":{"kind":"cat"},"spare":{}', '{"pet":{"kind":"cat"},"spare":null,"nick":1',
                '{"pet":{"kind":"cat"},"spare":null,"nick":null,"mood":"no"',
                '{"pet":{"kind":"cat"},"spare":null,"nick":null,"mood":"ok","tags":[]',
                '{"pet":{"kind":"cat"},"spare":null,"nick":null,"mood":"ok","tags":[1,2,',
                '{"pet":{"kind":"cat"},"spare":null,"nick":null,"mood":"ok","tags":[1],"n":1.5',
                '{"pet":{"kind":"cat"},"spare":null,"nick":null,"mood":"ok","tags":[1],"n":"x"']


def test_pydantic_shapes_take_their_objects_whole_and_reject_the_rest():
    root = compile_schema(PYDANTIC)
    for text in PYDANTIC_GOOD:
        assert is_complete(feed(initial_state(root), text.encode())), text
        assert all(not is_complete(feed(initial_state(root), text[:end].encode())) for end in range(len(text)))
    for text in PYDANTIC_BAD:
        assert feed(initial_state(root), text.encode()) is None, text


def test_a_definition_used_twice_is_compiled_once():
    root = compile_schema(PYDANTIC)
    pet, spare = root[1][0][1], root[1][1][1]
    assert spare[0] == "union" and pet in spare[1] and next(c for c in spare[1] if c[0] == "object") is pet


@pytest.mark.parametrize("schema, allowed, refused", [
    ({"type": "array", "maxItems": 0}, ["[]", "[ ]"], ["[1"]),
    ({"type": "array", "minItems": 2}, ["[1,2]", "[1,2,3]"], ["[]", "[1]"]),
    ({"type": "array", "items": {"type": "string"}, "maxItems": 1}, ['[]', '["a"]'], ['["a",']),
    ({"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "integer"}}, {"type": "null"}]},
     ['"a"', "[1]", "null"], ["1", "{}", "true"]),
    ({"enum": [1, 12, "x"], "type": ["integer", "null"]}, ["1", "12"], ["2", '"x"', "null"]),
])
def test_array_bounds_and_unions(schema, allowed, refused):
    root = compile_schema(one_property(schema))
    for value in allowed:
        assert is_complete(feed(initial_state(root), f'{{"a":{value}}}'.encode())), value
    for value in refused:
        assert feed(initial_state(root), f'{{"a":{value}}}'.encode()) is None, value


UNION = {"type": "object", "properties": {"a": {"anyOf": [{"type": "array", "items": {"type": "integer"},
                                                          "maxItems": 2, "minItems": 1}, {"type": "null"}]},
                                          "b": {"type": ["string", "boolean"]}}}


@pytest.mark.parametrize("text", ['{"a":', '{"a":[', '{"a":[1', '{"a":[1,', '{"a":[1,12', '{"a":n', '{"a":null,',
                                  '{"a":null,"b":', '{"a":null,"b":t', '{"a":[0],"b":"x'])
def test_the_full_mask_under_unions_and_bounds_is_every_token_checked(text):
    assert_mask_is_every_token_checked(UNION, text)


def assert_mask_is_every_token_checked(schema: dict, text: str) -> None:
    """After `text`, the constraint's mask allows exactly the tokens whose bytes the recogniser
    takes next, every token of the vocabulary fed one by one."""
    root = compile_schema(schema)
    constraint = JsonConstraint(JsonVocab(TOKENIZER, VOCAB), END_IDS, root)
    constraint.state = feed(initial_state(root), text.encode())
    assert constraint.state is not None
    data, mask = text.encode(), constraint.mask()
    for token_id in range(TOKENIZER.vocab_size):
        if token_id not in END_IDS and not TOKENIZER.is_special(token_id) and TOKENIZER.token_bytes(token_id):
            assert mask[token_id] == (
                feed(initial_state(root), data + TOKENIZER.token_bytes(token_id)) is not None), token_id


@pytest.mark.parametrize("seed", range(4))
def test_sampling_under_unions_and_bounds_writes_objects_of_the_schema(seed):
    body = {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": UNION}},
            "temperature": 1.0, "seed": seed}
    params = SamplingParams.from_request(body, eos_token_ids=END_IDS)
    sampler = Sampler(params, VOCAB, json_vocab=JsonVocab(TOKENIZER, VOCAB))
    tokens, text = generate(sampler, np.random.default_rng(seed), 400, False)
    assert tokens[-1] in END_IDS, text
    value = json.loads(text)
    assert list(value) == ["a", "b"] and isinstance(value["b"], (str, bool))
    assert value["a"] is None or 1 <= len(value["a"]) <= 2 and all(type(x) is int for x in value["a"])


# ---- maps: an object without properties (pydantic's dict[str, X]) -----------------------------

COUNTS = {"type": "object", "properties": {"counts": {"type": "object", "additionalProperties": {"type": "integer"},
                                                      "maxProperties": 2},
                                           "any": {"type": "object", "additionalProperties": True},
                                           "none": {"type": "object", "additionalProperties": False}},
          "required": ["counts", "any", "none"], "additionalProperties": False}


@pytest.mark.parametrize("text, complete", [
    ('{"counts":{},"any":{},"none":{}}', True), ('{"counts":{"a":1,"b b":-2},"any":{"x":[1,{"y":"z"}]},"none":{}}', True),
    ('{"counts":{ "é" : 3 },"any":{"a":1,"a":2},"none":{ }}', True), ('{"counts":{"a":', False),
    ('{"counts":{"a":1,"b":2,', None), ('{"counts":{"a":"1"', None), ('{"counts":{"a":1.5', None),
    ('{"counts":{a', None), ('{"counts":{"a":1},"any":{},"none":{"', None), ('{"counts":{"a":1,}', None)])
def test_a_map_takes_free_keys_with_values_of_its_schema_up_to_max_properties(text, complete):
    state = feed(initial_state(compile_schema(COUNTS)), text.encode())
    assert (None if state is None else is_complete(state)) is complete, text


@pytest.mark.parametrize("text", ['{"counts":{', '{"counts":{"', '{"counts":{"ab', '{"counts":{"a"', '{"counts":{"a":',
                                  '{"counts":{"a":1', '{"counts":{"a":1,', '{"counts":{"a":1,"b":12',
                                  '{"counts":{},"any":{"a":', '{"counts":{},"any":{},"none":{'])
def test_the_full_mask_under_a_map_is_every_token_checked(text):
    assert_mask_is_every_token_checked(COUNTS, text)


def scripted(sampler: Sampler, wishes: list[list[str]]) -> str:
    """Each step's logits rank the wished pieces first (the first highest); the text written."""
    tokens = []
    for wish in wishes:
        logits = np.zeros(VOCAB, np.float32)                                   # (vocab,)
        for rank, piece in enumerate(wish):
            logits[TOKENIZER.piece_to_id(piece) if piece else END_IDS[0]] = 10.0 - rank
        tokens.append(sampler.sample(logits, tokens).token_id)
    return TOKENIZER.decode(t for t in tokens if t not in END_IDS)


def test_greedy_sampling_writes_a_maps_keys_and_stops_at_max_properties():
    """The model wants more keys than maxProperties, a string value and a fraction: it gets
    integers, and the map closes after two keys ("" wishes the end token)."""
    schema = {"type": "object", "properties": {"ab": COUNTS["properties"]["counts"]}}
    body = {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
            "temperature": 0}
    sampler = Sampler(SamplingParams.from_request(body, eos_token_ids=END_IDS), VOCAB,
                      json_vocab=JsonVocab(TOKENIZER, VOCAB))
    text = scripted(sampler, [["{"], ['"'], ["ab"], ['":'], ["{"], ['"'], ["a"], ['":'], ['"', "0.5", "12"],
                              [",", "}"], ['"'], ["b"], ['":"', '":'], ["1"], [",", ".", "}"], ["", "}"], [""]])
    assert text == '{"ab":{"a":12,"b":1}}' and sampler.constraint.complete
