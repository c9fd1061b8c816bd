"""The command line's names: one definition per shared option, the model directory named the
same way everywhere, machine output as --json, old names kept for a release with a warning."""

from pathlib import Path

import typer

from icn_rt.cli import app
from icn_rt.cli.options import MODEL_HELP, PER_COMMAND, backends, one_backend, precisions
from tests.conftest import runner

CLI = Path(__file__).parents[1] / "icn_rt" / "cli"


def _commands() -> dict:
    root = typer.main.get_command(app)
    found = {}

    def walk(command, ctx, path):
        if hasattr(command, "list_commands"):
            for name in command.list_commands(ctx):
                walk(command.get_command(ctx, name), ctx, [*path, name])
        else:
            found[" ".join(path)] = command

    walk(root, root.make_context("icn-rt", [], resilient_parsing=True), [])
    return found


def _options(command) -> dict:
    return {name: p for p in command.params if p.param_type_name == "option" and not p.hidden
            for name in p.opts if name.startswith("--")}


def test_an_option_two_commands_take_has_one_help_and_one_type():
    seen: dict[str, dict[str, tuple]] = {}
    for name, command in _commands().items():
        for option, p in _options(command).items():
            if (name, option) not in PER_COMMAND:
                seen.setdefault(option, {})[name] = (p.help, str(p.bare_type()), p.multiple, p.is_flag)
    shared = {option: uses for option, uses in seen.items() if len(uses) > 1}
    assert {"--device", "--backend", "--proposals", "--workers", "--ray", "--json", "--model", "--student", "--out",
            "--split", "--seed", "--epochs", "--lr", "--batch-size", "--labels", "--pretrained"} <= set(shared)
    for option, uses in shared.items():
        assert len(set(uses.values())) == 1, (option, uses)


def test_every_command_names_the_model_directory_model():
    takes = {}
    for name, command in _commands().items():
        for p in command.params:
            if getattr(p, "hidden", False):
                continue
            if p.param_type_name == "argument" and p.name == "model_dir":
                takes[name] = ("argument", p.metavar, p.help if hasattr(p, "help") else MODEL_HELP)
            elif p.param_type_name == "option" and "--model" in p.opts:
                takes[name] = ("--model", p.metavar, p.help)
    assert {"infer", "export", "build-engine", "bench", "compare", "serve"} == {n for n, t in takes.items()
                                                                               if t[0] == "argument"}
    assert {"train classifier", "train calibrate-peaks", "train pseudo-labels", "train icn", "train student",
            "data convert"} == {n for n, t in takes.items() if t[0] == "--model"}
    assert {(metavar, help) for _, metavar, help in takes.values()} == {("MODEL", MODEL_HELP)}


def test_machine_output_is_json_and_counts_are_not_named_like_paths():
    for name, command in _commands().items():
        options = _options(command)
        for option, p in options.items():
            if "JSON" in (p.help or "") and "report" in (p.help or "").lower():
                assert option == "--json", (name, option)
        if "--images" in options:  # a list of images, never a count
            assert options["--images"].multiple, name


def test_the_cli_modules_stay_small_and_declare_shared_options_only_in_options_py():
    for path in CLI.glob("*.py"):
        source = path.read_text()
        assert len(source.splitlines()) <= 300, path.name
        if path.name != "options.py":
            for option in ("--device", "--proposals", "--workers", "--ray", "--nproc", "--backend", "--json", "--k"):
                assert f'typer.Option(None, "{option}"' not in source and f'"{option}", help' not in source, \
                    (path.name, option)


def test_backend_and_precision_lists():
    assert backends(None, ("torch", "onnxruntime")) == ["torch", "onnxruntime"]
    assert backends(["torch,onnxruntime:int8", "tensorrt"], ()) == ["torch", "onnxruntime:int8", "tensorrt"]
    assert one_backend(None) == "torch" and one_backend(["onnxruntime:int8"]) == "onnxruntime:int8"
    try:
        one_backend(["torch", "onnxruntime"])
    except ValueError as e:
        assert "runs one backend" in str(e)
    else:
        raise AssertionError("two backends for a command that runs one")
    assert precisions(["fp16,int8", "fp16"], ("fp32",)) == ("fp16", "int8") and precisions(None, ("fp32",)) == ("fp32",)


def test_old_names_work_for_a_release_with_a_warning(tmp_path):
    missing = str(tmp_path / "no-model")
    cases = [(["compare", missing, "x.jpg", "--with", "torch", "--with", "onnxruntime"], "--with", "--backend"),
             (["bench", missing, "--images", "2"], "--images", "--count"),
             (["bench", missing, "--backends", "torch"], "--backends", "--backend"),
             (["export", missing, "--calibration-images", "2"], "--calibration-images", "--calibration-count"),
             (["proposals", str(tmp_path / "no-root"), "--jobs", "1"], "--jobs", "--workers"),
             (["train", "classifier", str(tmp_path / "no-root"), "--out", missing], "--out", "--model"),
             (["train", "pseudo-labels", str(tmp_path / "no-root"), "--model", missing, "--out", missing], "--out",
              "--labels")]
    for args, old, new in cases:
        r = runner.invoke(app, args)
        text = " ".join(r.output.split())
        assert f"{old} is deprecated here and goes in the next release: use {new}" in text, (args, r.output)
        assert "No such option" not in text and r.exit_code == 2, (args, r.output)  # then the missing input


def test_quiet_leaves_out_the_training_progress_bars(classifier, tiny_voc, tmp_path):
    import shutil

    from tests.conftest import CLASSIFIER, ICN_ARGS

    for quiet in (False, True):
        flag = ["--quiet"] * quiet
        model = tmp_path / f"c{quiet}"
        r = runner.invoke(app, ["train", "classifier", str(tiny_voc), "--model", str(model), "--epochs", "1",
                                *CLASSIFIER, *flag])
        assert r.exit_code == 0, r.output
        assert ("batch/s" in r.output) is not quiet  # the bar's rate; the epoch's log line stays
        assert "epoch 1/1  loss" in r.output and "model -> " in r.output
        icn = tmp_path / f"i{quiet}"
        shutil.copytree(classifier, icn)
        r = runner.invoke(app, ["train", "icn", str(tiny_voc), "--model", str(icn), "--epochs", "1",
                                "--supervision", "saliency", *ICN_ARGS, *flag])
        assert r.exit_code == 0, r.output
        assert ("labels (saliency)" in r.output) is not quiet and ("batch/s" in r.output) is not quiet
        assert "ICN epoch 1/1  loss" in r.output and "ICN -> " in r.output
        labels = tmp_path / f"l{quiet}"
        r = runner.invoke(app, ["train", "pseudo-labels", str(tiny_voc), "--model", str(classifier),
                                "--supervision", "saliency", "--labels", str(labels), *flag])
        assert r.exit_code == 0, r.output
        assert ("labels (saliency)" in r.output) is not quiet and any(labels.iterdir())
