"""GQA/xGQA loaders on every real sample file (dict and list forms), the answer vocabulary, the careful flip."""
import json

import pytest
import torch
from PIL import Image
from torchvision.transforms.functional import to_tensor

from dataset.checked import AnnotationError
from dataset.gqa import (GQAEvalDataset, GQATrainDataset, collate_gqa_eval, collate_gqa_train, gqa_references,
                         may_flip, read_answer_list, read_gqa_questions)
from dataset.transforms import build_transform

RES = 16
XGQA = [f"xGQA/annotations/few_shot/{lang}/{split}.json" for lang in ("en", "de", "zh") for split in ("dev", "train_48")]
GQA = ["gqa/annotations/testdev.json", "gqa/annotations/testdev_balanced_questions.json"]


def write_image(path, size=(8, 6)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (90, 90, 20)).save(path, format="JPEG")


@pytest.mark.parametrize("name", XGQA + GQA)
def test_every_sample_file_loads_for_training_and_evaluation(iglue_sample, tmp_path, name):
    questions = read_gqa_questions(iglue_sample / "datasets" / name)
    assert len(questions) == 30
    for q in questions:
        write_image(tmp_path / f"{q.image_id}.jpg")
    transform = build_transform("test", RES)
    evaluation = GQAEvalDataset(questions, tmp_path, transform)
    train = GQATrainDataset(questions, tmp_path, transform)
    for i in range(len(questions)):
        image, question, qid = evaluation[i]
        assert image.shape == (3, RES, RES) and question and qid == questions[i].question_id
        image, question, answers, weights = train[i]
        assert answers and weights == [1.0] * len(answers)
    assert all(answer for answer in evaluation.references.values())  # every sample question has an answer


def test_dict_and_list_forms(iglue_sample):
    dict_form = read_gqa_questions(iglue_sample / "datasets/xGQA/annotations/few_shot/de/dev.json")
    q = dict_form[0]
    assert (q.question_id, q.image_id, q.question, q.reference) == ("201640614", "n235859", "Wer trägt das Kleid?",
                                                                     "women")
    list_form = read_gqa_questions(iglue_sample / "datasets/gqa/annotations/testdev.json")
    q = list_form[0]
    assert (q.question_id, q.image_id, q.question, q.reference) == ("201307251", "n161313", "Is it overcast?", "no")
    refs = gqa_references(list_form)
    assert refs["201640614"] == "women" and len(refs) == 30


def test_answer_vocabulary_both_files(iglue_sample):
    ans2label = read_answer_list(iglue_sample / "datasets/gqa/annotations/trainval_ans2label.json")
    label2ans = read_answer_list(iglue_sample / "datasets/gqa/annotations/trainval_label2ans.json")
    assert len(ans2label) == len(label2ans) == 1842
    assert ans2label[:3] == ["puddle", "soap", "wallet"]    # file order of the dict, as the reference
    assert label2ans[:3] == ["cat food", "elephant", "gloves"]
    assert set(ans2label) == set(label2ans)


def test_questions_are_cleaned_with_train_and_eval_lengths(tmp_path):
    path = tmp_path / "q.json"
    long_question = " ".join(f"w{i}" for i in range(60)) + "?"
    path.write_text(json.dumps({"1": {"question": "Is the CUP left of the plate?", "imageId": "n1", "answer": "yes"},
                                "2": {"question": long_question, "imageId": "n2", "answer": "no"}}))
    questions = read_gqa_questions(path)
    train = GQATrainDataset(questions, tmp_path, lambda im: im)
    evaluation = GQAEvalDataset(questions, tmp_path, lambda im: im)
    assert train.texts[0] == "is the cup left of the plate"
    assert len(train.texts[1].split(" ")) == 30 and len(evaluation.texts[1].split(" ")) == 50


def test_careful_flip_never_mirrors_left_right_questions(tmp_path):
    image = Image.new("RGB", (4, 2), (255, 0, 0))
    image.paste((0, 0, 255), (2, 0, 4, 2))  # left half red, right half blue
    image.save(tmp_path / "n1.jpg", format="PNG")
    path = tmp_path / "q.json"
    path.write_text(json.dumps([
        {"img_id": "n1", "label": {"red": 1.0}, "question_id": "1", "sent": "What colour is the left half?"},
        {"img_id": "n1", "label": {"left": 1.0}, "question_id": "2", "sent": "Where is the red part?"},
        {"img_id": "n1", "label": {"red": 1.0}, "question_id": "3", "sent": "What colour is on the LEFT?"},
        {"img_id": "n1", "label": {"red": 1.0}, "question_id": "4", "sent": "Which colour is there?"},
    ]))
    ds = GQATrainDataset(read_gqa_questions(path), tmp_path, to_tensor, flip_prob=1.0)
    red_first = [ds[i][0][0, 0, 0].item() > 0.5 for i in range(4)]
    # 1, 2: "left" in question/answer -> never flipped; 3: the check is case-sensitive ("LEFT") -> flipped; 4 flipped
    assert red_first == [True, True, False, False]
    assert may_flip("Is it big?", ("yes",)) and not may_flip("Is it big?", ("right",))
    no_flip = GQATrainDataset(read_gqa_questions(path), tmp_path, to_tensor, flip_prob=0.0)
    assert all(no_flip[i][0][0, 0, 0].item() > 0.5 for i in range(4))


def test_collates():
    image = torch.zeros(3, 2, 2)
    images, questions, answers, weights, counts = collate_gqa_train(
        [(image, "q1", ["a", "b"], [0.5, 0.5]), (image, "q2", ["c"], [1.0])])
    assert images.shape == (2, 3, 2, 2) and answers == ["a", "b", "c"] and counts == [2, 1]
    assert weights.tolist() == [0.5, 0.5, 1.0]
    images, questions, qids = collate_gqa_eval([(image, "q1", "7"), (image, "q2", "9")])
    assert qids == ["7", "9"] and questions == ["q1", "q2"]


def test_errors_name_file_and_question(tmp_path):
    path = tmp_path / "q.json"
    path.write_text(json.dumps({"5": {"question": "What?", "answer": "x"}}))
    with pytest.raises(AnnotationError, match=r"q.json:1: missing key\(s\) \['imageId'\]"):
        read_gqa_questions(path)
    path.write_text(json.dumps([{"img_id": "n1", "question_id": "1", "sent": "What?"}]))
    with pytest.raises(AnnotationError, match=r"q.json:1: a training question needs an answer"):
        GQATrainDataset(read_gqa_questions(path), tmp_path, to_tensor)
    ds = GQAEvalDataset(read_gqa_questions(path), tmp_path, to_tensor)
    assert ds.references == {"1": None}
    with pytest.raises(ValueError) as info:
        ds[0]
    assert "n1.jpg" in str(info.value) and "q.json:1" in str(info.value)
    path.write_text('{"1": {"question": ')
    with pytest.raises(AnnotationError, match="q.json:1: malformed JSON"):
        read_gqa_questions(path)
    path.write_text('"just a string"')
    with pytest.raises(AnnotationError, match="expected a list"):
        read_gqa_questions(path)
