from pathlib import Path

import pytest

from slurm_llm.cli import main


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("up", "status", "keep-alive", "down", "presets", "prepare-model", "demo"):
        assert command in out


def test_presets_are_listed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["presets"]) == 0
    assert "smollm2-135m" in capsys.readouterr().out


def test_an_unknown_spec_exits_1_with_a_clear_message(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["up", "no-such-model"]) == 1
    err = capsys.readouterr().err
    assert "neither a preset" in err and "Traceback" not in err


def test_an_invalid_spec_file_names_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "bad.toml"
    spec.write_text('name = "m"\nmodel = "x"\nengine = "tgi"\ndevice = "cpu"\n')
    assert main(["up", str(spec), "--executor", "local"]) == 1
    assert "engine 'tgi' cannot run with device='cpu'" in capsys.readouterr().err


def test_down_without_a_name_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["down"]) == 1
    assert "--all" in capsys.readouterr().err


def test_status_of_an_unknown_deployment(
    slurm_llm_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "ghost"]) == 1
    assert "no deployment named 'ghost'" in capsys.readouterr().err
