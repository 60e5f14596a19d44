from tests.hw.fakebin import hangs, live_group_members, write_tool
from velollmd.hw.run import FAILED, MISSING, OK, TIMEOUT, run_command


def test_ok_captures_stdout(tmp_path):
    tool = write_tool(tmp_path, "hello", "echo hi; echo err >&2")
    result = run_command([str(tool)])
    assert (result.status, result.returncode, result.stdout, result.stderr) == (OK, 0, "hi\n", "err\n")


def test_missing_tool_is_a_note():
    result = run_command(["velollm-no-such-tool-xyz"])
    assert (result.status, result.note) == (MISSING, "velollm-no-such-tool-xyz: not found")


def test_nonzero_exit_keeps_output_and_first_line(tmp_path):
    tool = write_tool(tmp_path, "bad", "echo 'Failed to initialize NVML: Unknown Error'; exit 9")
    result = run_command([str(tool)])
    assert (result.status, result.returncode) == (FAILED, 9)
    assert result.note.endswith("exit 9: Failed to initialize NVML: Unknown Error")
    assert "Unknown Error" in result.output


def test_hang_kills_whole_process_group(tmp_path):
    pid_file = tmp_path / "pid"
    tool = write_tool(tmp_path, "hang", hangs(pid_file))
    result = run_command([str(tool)], timeout_s=0.5)
    assert result.status == TIMEOUT and "timed out after 0.5 s" in result.note
    pgid = int(pid_file.read_text())
    assert pgid == result.pid
    assert live_group_members(pgid) == []    # the shell and its `sleep` child are gone


def test_not_executable_is_failed(tmp_path):
    path = tmp_path / "plain"
    path.write_text("echo hi\n")
    result = run_command([str(path)])
    assert result.status == FAILED and "cannot start" in result.note
