import pytest

from nas import Arch, Decision, NASError


def test_decision_rejects_bad_options():
    with pytest.raises(ValueError):
        Decision("d", ())
    with pytest.raises(TypeError):
        Decision("d", ([1, 2],))
    with pytest.raises(ValueError):
        Decision("d", (3, 3))
    # 3 and 3.0 and True are distinct options
    d = Decision("d", (1, 1.0, True, None, "x"))
    assert d.index(1.0) == 1 and d.index(True) == 2 and d.index(None) == 3


def test_decision_index_error_lists_options():
    d = Decision("k", (3, 5, 7))
    with pytest.raises(NASError, match="options are: 3, 5, 7"):
        d.index(4)


def test_arch_is_immutable_hashable_and_order_free():
    a = Arch({"b": 1, "a": "x"})
    b = Arch(a=str("x"), b=1)
    assert a == b and hash(a) == hash(b) and a.key() == b.key()
    assert {a: 1}[b] == 1
    with pytest.raises(TypeError):
        a["a"] = "y"
    assert a.replace(b=2) != a and a["b"] == 1


def test_arch_json_round_trip():
    a = Arch({"k": 3, "e": 6.0, "act": "relu", "skip": None, "fused": True})
    text = a.to_json(space="mbconv", indent=2)
    b = Arch.from_json(text)
    assert b == a
    assert isinstance(b["fused"], bool) and isinstance(b["e"], float)
    assert Arch.from_json('{"k": 3}') == Arch(k=3)


@pytest.mark.parametrize("text", ["not json", "[1, 2]", '{"decisions": [1]}', '{"k": [1, 2]}'])
def test_arch_from_bad_json_is_a_one_line_error(text):
    with pytest.raises(NASError) as info:
        Arch.from_json(text)
    assert "\n" not in str(info.value)
