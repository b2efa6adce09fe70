from chatcli.engine.textstream import StopMatcher, Utf8Stream


def test_utf8_holds_back_split_characters():
    stream = Utf8Stream()
    data = "héllo 世界 🎉".encode()
    out = "".join(stream.feed(data[i : i + 1]) for i in range(len(data)))
    assert out + stream.flush() == "héllo 世界 🎉"
    # A lone first byte of a 4-byte emoji produces nothing until the rest arrives.
    s2 = Utf8Stream()
    assert s2.feed("🎉".encode()[:1]) == ""
    assert s2.feed("🎉".encode()[1:]) == "🎉"


def test_utf8_flush_replaces_unfinished_sequence():
    stream = Utf8Stream()
    assert stream.feed(b"ok\xe4\xb8") == "ok"
    assert stream.flush() == "\ufffd"


def feed_all(matcher, pieces):
    return "".join(matcher.feed(p) for p in pieces)


def test_stop_across_pieces():
    m = StopMatcher(["<END>"])
    out = feed_all(m, ["Hello <", "EN", "D> ignored"])
    assert out == "Hello " and m.stopped


def test_partial_stop_prefix_is_released():
    m = StopMatcher(["<END>"])
    out = feed_all(m, ["a <E", "x"]) + m.flush()
    assert out == "a <Ex" and not m.stopped


def test_earliest_of_several_stops_wins():
    m = StopMatcher(["world", "lo w"])
    assert feed_all(m, ["hello world"]) == "hel" and m.stopped


def test_no_stops_passes_through():
    m = StopMatcher([])
    assert m.feed("anything") == "anything"


def test_holdback_is_bounded_by_stop_length():
    # The held-back tail never exceeds the longest stop string: constant work per token.
    m = StopMatcher(["abcdef"])
    out = []
    for _ in range(1000):
        out.append(m.feed("abcde"))
        assert len(m._pending) < 6
    assert "".join(out) + m.flush() == "abcde" * 1000
