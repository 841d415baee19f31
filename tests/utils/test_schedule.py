"""The evaluation schedule and the evaluation history: which epochs are evaluated, which evaluation is the best."""
import pytest

from utils.schedule import LAST, EvaluationHistory, EvaluationSchedule


def due(schedule: EvaluationSchedule, epochs: int) -> list[int]:
    return [e for e in range(epochs) if schedule.due(e, final=e == epochs - 1)]


@pytest.mark.parametrize("config,epochs,expected", [
    ({"start_eval": 9, "eval_interval": 10}, 60, [9, 19, 29, 39, 49, 59]),   # few-shot configs
    ({"start_eval": 2, "eval_interval": 1}, 5, [2, 3, 4]),                   # GQA.yaml
    ({"start_eval": 6}, 10, [6, 7, 8, 9]),                                   # NLVR.yaml
    ({"start_eval": 7, "eval_interval": 1}, 10, [7, 8, 9]),                  # xFlickrCO.yaml
    ({}, 3, [0, 1, 2]),                                                      # every epoch by default
    ({"start_eval": 9, "eval_interval": 10}, 12, [9, 11]),                   # the last epoch is always evaluated
    ({"run": {"eval_every": 2}}, 5, [1, 3, 4]),                              # the engine key applies as well
])
def test_the_reference_schedule(config, epochs, expected):
    assert due(EvaluationSchedule.from_config(config), epochs) == expected


def test_a_run_stopped_by_max_steps_is_evaluated_where_it_stops():
    assert EvaluationSchedule(start=5).due(1, final=True)


def test_the_best_is_the_highest_selection_metric_earliest_on_ties():
    history = EvaluationHistory("val_acc")
    assert history.add(10, 0, {"val_acc": 50.0, "test_de_acc": 90.0})
    assert history.add(20, 1, {"val_acc": 60.0, "test_de_acc": 10.0})
    assert not history.add(30, 2, {"val_acc": 60.0, "test_de_acc": 99.0})  # a tie keeps the earlier one
    assert not history.add(40, 3, {"other": 1.0})
    assert history.best()["step"] == 20 and history.best()["epoch"] == 1
    assert history.last()["step"] == 40
    assert history.best_pointer() == {"val_acc": 60.0, "epoch": 1, "step": 20}


def test_last_rule_and_no_rule():
    last = EvaluationHistory(LAST)
    assert last.add(5, 0, {"x": 1.0}) and last.add(9, 1, {"x": 0.0})
    assert last.best()["step"] == 9
    none = EvaluationHistory(None)
    assert not none.add(5, 0, {"x": 1.0}) and none.best() is None and none.best_pointer() == {}


def test_the_history_round_trips_through_a_state_dict():
    history = EvaluationHistory("m")
    history.add(3, 0, {"m": 1.0})
    history.add(6, 1, {"m": 2.0})
    restored = EvaluationHistory("m")
    restored.load_state_dict(history.state_dict())
    assert restored.records == history.records and restored.best() == history.best()
