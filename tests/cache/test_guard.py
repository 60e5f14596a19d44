import pytest

from velollmd.cache.guard import mismatch, numbers, quoted, within_one_edit

MUST_MISS = {                  # why the guard refuses: pairs that must not share an answer
    "negation": [
        ("Is Python fast?", "Isn't Python fast?"),
        ("Show files that contain errors", "Show files that don't contain errors"),
        ("Turn the lights on", "Turn the lights off"),
        ("Coffee with sugar", "Coffee without sugar"),
        ("I can do it", "I cannot do it"),
        ("I can do it", "I cant do it"),
    ],
    "number": [
        ("List 5 prime numbers", "List 6 prime numbers"),
        ("List five prime numbers", "List six prime numbers"),
        ("What is 3.14 rounded", "What is 3.15 rounded"),
    ],
    "quoted": [('Translate "Hello" to French', 'Translate "Goodbye" to French')],
    "symbol": [                # operators and signs: same words, same numbers, another answer
        ("What is 2+2?", "What is 2-2?"),
        ("What is 6*3?", "What is 6/3?"),
        ("Is 5 > 3?", "Is 5 < 3?"),
        ("Is -3 greater than 2?", "Is 3 greater than 2?"),
        ("What is 10% of 50?", "What is 10 of 50?"),
    ],
    "content": [
        ("How do I enable SSH on Ubuntu?", "How do I disable SSH on Ubuntu?"),
        ("What is the capital of France?", "What is the capital of Spain?"),
        ("Sort in ascending order", "Sort in descending order"),
    ],
}
MAY_HIT = [
    ("How do I reverse a list in Python?", "how can i reverse a list in python please"),
    ("Don't use recursion", "Do not use recursion"),
    ("Explain photosynthesis", "Explain photosynthsis"),
    ("List the planets", "List the planet"),
    ("What's the capital of France?", "Whats the capital of france"),
]


@pytest.mark.parametrize("reason,a,b", [(reason, a, b) for reason, pairs in MUST_MISS.items() for a, b in pairs])
def test_near_misses_are_rejected(reason, a, b):
    assert mismatch(a, b) == reason
    assert mismatch(b, a) == reason


@pytest.mark.parametrize("a,b", MAY_HIT)
def test_paraphrases_pass(a, b):
    assert mismatch(a, b) is None and mismatch(b, a) is None


def test_extractors():
    assert numbers("pay 1,000 dollars, twice") == ["1000", "twice"]
    assert quoted("say 'hi' and \"Bye\" but don't") == ["hi", "Bye"]
    assert within_one_edit("python", "pyhton") and within_one_edit("abc", "abcd")
    assert not within_one_edit("ascending", "descending")


def test_direction_swap_is_rejected_but_plain_reorder_passes():
    assert mismatch("Translate this from French to English",
                    "Translate this from English to French") == "order"
    assert mismatch("Is a cat bigger than a dog?", "Is a dog bigger than a cat?") == "order"
    assert mismatch("In Python, how do I reverse a list?", "How do I reverse a list in Python?") is None
