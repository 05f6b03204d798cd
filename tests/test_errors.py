import pytest

from stages.errors import PipelineError, run_stage


def test_pipeline_error_is_one_line_and_exit_1(capsys):
    def main():
        raise PipelineError("params.yaml: train.lr: must be > 0")

    with pytest.raises(SystemExit) as exit_:
        run_stage(main)
    assert exit_.value.code == 1
    assert capsys.readouterr().err == "error: params.yaml: train.lr: must be > 0\n"


def test_running_out_of_memory_is_one_line_too(capsys):
    def main():
        raise MemoryError("Unable to allocate 29.2 GiB")

    with pytest.raises(SystemExit) as exit_:
        run_stage(main)
    assert exit_.value.code == 1
    assert capsys.readouterr().err == (
        "error: out of memory (Unable to allocate 29.2 GiB); "
        "a smaller train.hidden or batch needs less\n")


def test_other_exceptions_are_bugs_and_keep_their_traceback():
    def main():
        raise KeyError("bug")

    with pytest.raises(KeyError):
        run_stage(main)
