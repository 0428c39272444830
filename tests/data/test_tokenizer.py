import pytest

from chargpt import CharTokenizer
from chargpt.errors import VocabularyError

SHAKESPEARE_VOCAB = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def test_vocabulary_is_the_sorted_set_of_characters(shakespeare_path):
    text = shakespeare_path.read_text(encoding="utf-8")
    tok = CharTokenizer.from_text(text)
    assert tok.vocab_size == 65
    assert tok.chars == SHAKESPEARE_VOCAB


def test_encode_decode_round_trip_is_exact_and_matches_the_notebook(shakespeare_path):
    text = shakespeare_path.read_text(encoding="utf-8")[:20000]
    tok = CharTokenizer.from_text(text)
    stoi = {ch: i for i, ch in enumerate(sorted(set(text)))}  # the notebook's mapping
    ids = tok.encode(text)
    assert ids == [stoi[c] for c in text]
    assert tok.decode(ids) == text
    assert tok.encode("hii there") == [stoi[c] for c in "hii there"]


def test_unicode_characters_round_trip():
    text = "héllo wörld — 你好 🙂\n"
    tok = CharTokenizer.from_text(text)
    assert tok.decode(tok.encode(text)) == text
    assert tok.vocab_size == len(set(text))


def test_unknown_character_names_the_character_and_position():
    tok = CharTokenizer.from_text("abc ")
    with pytest.raises(VocabularyError, match=r"'z' at position 4"):
        tok.encode("abc z")
    with pytest.raises(VocabularyError, match="position 0"):
        tok.encode("€")


def test_save_and_load_json(tmp_path):
    tok = CharTokenizer.from_text("to be or not to be\n")
    path = tmp_path / "vocab.json"
    tok.save(path)
    assert CharTokenizer.load(path) == tok
    assert '"chars"' in path.read_text()


def test_decode_rejects_out_of_range_ids():
    tok = CharTokenizer.from_text("ab")
    with pytest.raises(VocabularyError):
        tok.decode([0, 2])


def test_a_vocabulary_file_that_is_not_a_regular_utf8_json_file_is_one_clear_error(tmp_path):
    import os
    import signal

    from chargpt.errors import DataError

    os.mkfifo(tmp_path / "fifo.json")  # opening it for reading would wait for a writer forever
    (tmp_path / "latin1.json").write_bytes(b'{"type": "char", "chars": "caf\xe9"}')

    def waited(*_):
        raise TimeoutError("waited on the FIFO")

    before = signal.signal(signal.SIGALRM, waited)
    signal.alarm(10)
    try:
        with pytest.raises(DataError, match="cannot read vocabulary .*FIFO"):
            CharTokenizer.load(tmp_path / "fifo.json")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, before)
    with pytest.raises(DataError, match="cannot read vocabulary"):
        CharTokenizer.load(tmp_path / "latin1.json")
