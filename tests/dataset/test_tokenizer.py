"""The offline tokenizer trainer produces the XLM-R id layout and loads with AutoTokenizer."""
import json

import pytest

from dataset.tokenizer import check_xlmr_layout, load_tokenizer, train_tokenizer

TEXTS = ["a red circle on the left", "ein roter kreis links", "un cercle rouge à gauche",
         "červený kruh vlevo", "左に赤い丸があります", "左边有一个红色的圆"] * 20


def test_trained_tokenizer_has_xlmr_ids(tmp_path):
    out = train_tokenizer(TEXTS, tmp_path / "tok", vocab_size=120)
    tok = load_tokenizer(out)
    assert (tok.cls_token_id, tok.pad_token_id, tok.sep_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert tok.mask_token_id == len(tok) - 1
    ids = tok("a red circle")["input_ids"]
    assert ids[0] == 0 and ids[-1] == 2
    pair = tok("a red circle", "ein roter kreis")["input_ids"]
    assert pair.count(2) == 3
    assert len(tok("左边有一个红色的圆")["input_ids"]) > 3  # CJK without spaces is still split


def test_layout_check_names_the_problem():
    class Fake:
        cls_token_id, pad_token_id, sep_token_id, unk_token_id, mask_token_id = 0, 0, 2, 3, 9

        def __len__(self):
            return 10

    with pytest.raises(ValueError, match="pad_token_id is 0"):
        check_xlmr_layout(Fake(), where="x")


def test_a_text_encoder_folder_without_tokenizer_files_is_an_error(tmp_path):
    from dataset.tokenizer import TokenizerError

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "xlm-roberta", "vocab_size": 250002}))
    with pytest.raises(TokenizerError, match=rf"{tmp_path}: the text encoder folder holds no tokenizer file"):
        load_tokenizer(tmp_path)


def test_the_tokenizer_must_match_the_models_vocabulary(tmp_path):
    from dataset.tokenizer import TokenizerError

    folder = train_tokenizer(TEXTS, tmp_path / "tok", vocab_size=120)
    ids = len(load_tokenizer(folder))
    (folder / "config.json").write_text(json.dumps({"model_type": "xlm-roberta", "vocab_size": ids + 1}))
    with pytest.raises(TokenizerError, match=rf"tok: the tokenizer has {ids} ids but config.json's vocab_size .* is "
                                             rf"{ids + 1}"):
        load_tokenizer(folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "xlm-roberta", "vocab_size": ids}))
    assert len(load_tokenizer(folder)) == ids
