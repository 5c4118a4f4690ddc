"""A failed run ends with its cause: one line naming the file or option and the fix, and a documented exit status."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from monai.bundle import ConfigParser
from torch._utils import ExceptionWrapper

from common.errors import (
    EXIT_FAILURE,
    EXIT_USER_ERROR,
    OptionError,
    OutputExistsError,
    UserError,
    config_expression,
    ensure_absent,
    error_line,
    exit_status,
    root_cause,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE = REPO_ROOT / "bundles" / "acdc17_rrw"


def raise_from_config(expression: str, **values) -> BaseException:
    """The exception MONAI raises when a config expression fails (a RuntimeError wrapping the cause)."""
    parser = ConfigParser({"imports": ["$from common.errors import ensure_absent"], "key": expression, **values})
    with pytest.raises(RuntimeError) as error_info:
        parser.get_parsed_content("key")
    return error_info.value


def test_the_cause_is_found_behind_monai_wrappers(tmp_path):
    existing = tmp_path / "model.pt"
    existing.touch()
    error = raise_from_config(f"$ensure_absent('{existing}')")
    assert str(error).startswith("Failed to evaluate ConfigExpression")
    cause = root_cause(error)
    assert isinstance(cause, OutputExistsError) and isinstance(cause, FileExistsError)
    assert error_line(error) == (
        f"error: {existing}: already exists from an earlier run; pass --overwrite to replace it or choose another "
        "output location"
    )
    assert exit_status(error) == EXIT_USER_ERROR

    wrong_type = raise_from_config(f"$ensure_absent('{existing}', overwrite=@overwrite)", overwrite="true")
    assert isinstance(root_cause(wrong_type), OptionError) and isinstance(root_cause(wrong_type), TypeError)
    assert error_line(wrong_type).endswith("got 'true'; pass --overwrite True (capitalised)")


def test_a_bug_keeps_its_type_and_the_outermost_user_error_wins():
    def chain(*errors: BaseException) -> BaseException:
        for inner, outer in zip(errors[1:], errors[:-1], strict=True):
            outer.__cause__ = inner
        return errors[0]

    bug = chain(RuntimeError("applying transform"), RuntimeError("applying transform"), KeyError("image"))
    assert root_cause(bug).args == ("image",)
    assert error_line(bug) == "error: KeyError: 'image'" and exit_status(bug) == EXIT_FAILURE
    # a caller that re-raises with the file name is more specific than the error it wraps
    named = chain(RuntimeError("wrapper"), UserError("a.csv, line 3: bad value"), UserError("bad value"))
    assert error_line(named) == "error: a.csv, line 3: bad value"
    # a RuntimeError that is the cause itself (no further cause) is reported, not skipped
    assert error_line(RuntimeError("CUDA out of memory")) == "error: RuntimeError: CUDA out of memory"
    # implicit context (raised while handling another error) is not the cause
    try:
        try:
            {}["missing"]
        except KeyError:
            raise UserError("option x: unknown value 'y'; choose one of a, b") from None
    except UserError as error:
        assert error_line(error) == "error: option x: unknown value 'y'; choose one of a, b"
    looping = RuntimeError("loop")
    looping.__cause__ = looping
    assert root_cause(looping) is looping


def test_a_failing_config_expression_is_named_with_its_references():
    numeric_root = raise_from_config("$@bundle_root + '/models'", bundle_root=2024)  # --bundle_root 2024
    assert error_line(numeric_root) == (
        "error: TypeError: unsupported operand type(s) for +: 'int' and 'str' "
        "(in the config expression $@bundle_root + '/models')"
    )
    long = "$int(@train#settings['epochs']) + len('" + "x" * 90 + "')"  # pformat splits it over several lines
    error = raise_from_config(long, train={"settings": {"epochs": "many"}})
    assert error_line(error) == (
        f"error: ValueError: invalid literal for int() with base 10: 'many' (in the config expression {long})"
    )
    assert config_expression(RuntimeError("no config involved")) is None


def reraised_by_a_dataloader(error: BaseException) -> BaseException:
    """What the main process gets when a DataLoader worker raised ``error``: a new error holding its traceback text."""
    try:
        raise error
    except BaseException:
        wrapper = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(BaseException) as error_info:
        wrapper.reraise()
    return error_info.value


def test_errors_of_dataloader_workers_are_traced_to_their_cause(tmp_path):
    bad_label = tmp_path / "case_gt.nii.gz"
    try:
        raise ValueError(f"{bad_label}: label values must lie in [0, 3]")
    except ValueError as cause:
        wrapped = RuntimeError("applying transform <ValidateSegmentationd>")
        wrapped.__cause__ = cause
    reraised = reraised_by_a_dataloader(wrapped)
    assert type(reraised) is RuntimeError and reraised.__cause__ is None  # only the text of the chain survives
    assert error_line(reraised) == f"error: ValueError: {bad_label}: label values must lie in [0, 3]"
    assert exit_status(reraised) == EXIT_FAILURE

    user = reraised_by_a_dataloader(OutputExistsError(f"{bad_label}: already exists"))
    assert error_line(user) == f"error: {bad_label}: already exists" and exit_status(user) == EXIT_USER_ERROR

    class CustomError(Exception):
        def __init__(self, code: int, detail: str) -> None:
            super().__init__(f"code {code}: {detail}")

    custom = reraised_by_a_dataloader(CustomError(7, "sensor offline"))  # cannot be rebuilt from the text
    assert error_line(custom).endswith("CustomError: code 7: sensor offline")


def test_ensure_absent_accepts_only_bools_and_keeps_existing_files(tmp_path):
    existing = tmp_path / "table.csv"
    existing.write_text("keep")
    with pytest.raises(OptionError, match="overwrite must be True or False, got 1"):
        ensure_absent(existing, overwrite=1)
    with pytest.raises(FileExistsError, match="table.csv: already exists"):
        ensure_absent(tmp_path / "absent.csv", existing)
    ensure_absent(existing, overwrite=True)
    assert existing.read_text() == "keep"
    with pytest.raises(OutputExistsError, match=f"{tmp_path}: is a folder, and this output is a file"):
        ensure_absent(tmp_path, overwrite=True)


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=REPO_ROOT, timeout=60
    )


def test_the_hook_prints_the_cause_last_with_the_documented_status():
    user = run_python(
        """
        import common.error_hook
        from common.errors import UserError
        print("working")
        try:
            raise UserError("settings.yaml: patch_size must be positive; set --patch_size [64, 64]")
        except UserError as error:
            raise RuntimeError("Failed to evaluate ConfigExpression") from error
        """
    )
    assert user.returncode == EXIT_USER_ERROR
    assert user.stdout == "working\n"
    assert user.stderr == "error: settings.yaml: patch_size must be positive; set --patch_size [64, 64]\n"

    bug = run_python("import common.error_hook\nraise RuntimeError('applying transform') from ZeroDivisionError('x')")
    assert bug.returncode == EXIT_FAILURE
    assert "Traceback (most recent call last)" in bug.stderr  # a bug keeps its traceback for the report
    assert bug.stderr.splitlines()[-1] == "error: ZeroDivisionError: x"

    interrupted = run_python("import common.error_hook\nraise KeyboardInterrupt")
    assert interrupted.stderr.splitlines()[-1] == "KeyboardInterrupt"  # Python's own report and SIGINT status
    assert interrupted.returncode not in (0, EXIT_FAILURE, EXIT_USER_ERROR)


def start_bundle(*options: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/train.yaml", *options]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=BUNDLE)


def finish(process: subprocess.Popen) -> tuple[int, str]:
    """Exit status and stderr of a started bundle run."""
    _, stderr = process.communicate(timeout=300)
    return process.returncode, stderr


@pytest.mark.filterwarnings("ignore")
def test_bundle_runs_end_with_the_cause_of_a_user_error(tmp_path):
    models = tmp_path / "run" / "models"
    models.mkdir(parents=True)
    (models / "checkpoint.pt").write_bytes(b"earlier training state")
    # both runs at once: each spends most of its time importing torch and MONAI
    existing = start_bundle("--bundle_root", str(tmp_path / "run"), "--dataset_dir", str(tmp_path / "data"))
    missing = start_bundle("--bundle_root", str(tmp_path / "fresh"), "--dataset_dir", str(tmp_path / "data"))
    (existing_status, existing_err), (missing_status, missing_err) = finish(existing), finish(missing)

    assert existing_status == EXIT_USER_ERROR
    assert existing_err.splitlines()[-1] == (
        f"error: {models / 'checkpoint.pt'}: already exists from an earlier run; continue that run with --resume True, "
        "start it over with --overwrite True, or train (e.g. on another data set) in another --bundle_root"
    )
    assert "Traceback" not in existing_err
    assert (models / "checkpoint.pt").read_bytes() == b"earlier training state"

    assert missing_status == EXIT_USER_ERROR
    assert missing_err.splitlines()[-1].startswith(f"error: {tmp_path / 'data' / 'datalist.json'}: datalist not")
