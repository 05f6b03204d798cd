import pytest

from stages.errors import PipelineError, run_stage


def test_pipeline_error_is_one_line_and_exit_1(capsys):
    def main():
        raise PipelineError("params.yaml: train.lr: must be > 0")

    with pytest.raises(SystemExit) as exit_:
        run_stage(main)
    assert exit_.value.code == 1
    assert capsys.readouterr().err == "error: params.yaml: train.lr: must be > 0\n"


@pytest.mark.parametrize(("hint", "ending"), [
    ("", ""), ("a smaller train.hidden needs less", "; a smaller train.hidden needs less")])
def test_running_out_of_memory_is_one_line_too(capsys, hint, ending):
    def main():
        raise MemoryError("Unable to allocate 29.2 GiB")

    with pytest.raises(SystemExit) as exit_:
        run_stage(main, memory_hint=hint)
    assert exit_.value.code == 1
    message = f"error: out of memory (Unable to allocate 29.2 GiB){ending}\n"
    assert capsys.readouterr().err == message


def test_other_exceptions_are_bugs_and_keep_their_traceback():
    def main():
        raise KeyError("bug")

    with pytest.raises(KeyError):
        run_stage(main)
