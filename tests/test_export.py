"""export.py: the embedding network as ONNX with a dynamic batch, checked by onnxruntime."""

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")

from hostile import one_line_error  # noqa: E402
import export  # noqa: E402  (code/export.py)
from uniformface.train.checkpoint import export_weights  # noqa: E402
from uniformface.tools.export import compare_with_onnxruntime, export_onnx  # noqa: E402
from uniformface.nn.models import build_model, normalize_pixels  # noqa: E402


@pytest.fixture
def weights(tmp_path):
    torch.manual_seed(3)
    model = build_model("sphereface4", 16, (112, 96))
    path = tmp_path / "run" / "sphereface4_16.pt"
    export_weights(path, model, {"model_name": "sphereface4", "emb_dim": 16, "input_size": [112, 96]})
    return path, model.eval()


def test_cli_exports_a_dynamic_batch_graph_that_matches_pytorch(weights, capsys):
    path, model = weights
    assert export.main(["--model_path", str(path)]) == 0
    onnx_path = path.with_suffix(".onnx")
    assert "ok" in capsys.readouterr().out
    graph = onnx.load(onnx_path)
    assert [p.key for p in graph.metadata_props][:3] == ["model_name", "emb_dim", "input_size"]
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(11)
    for batch in (1, 5):  # neither is the batch of 2 the graph was traced with
        x = normalize_pixels(torch.randint(0, 256, (batch, 3, 112, 96), dtype=torch.uint8, generator=generator))
        with torch.no_grad():
            expected = model(x).double().numpy()
        got = session.run(None, {"images": x.numpy()})[0].astype(np.float64)
        assert got.shape == (batch, 16)
        assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


def test_a_graph_off_by_a_tenth_of_a_percent_fails_the_check(tmp_path, weights):
    _, model = weights
    wrong = build_model("sphereface4", 16, (112, 96))
    wrong.load_state_dict(model.state_dict())
    with torch.no_grad():
        wrong.fc5.weight.mul_(1.001)  # fc5 has zero bias: every embedding scaled by 1.001
    export_onnx(wrong, (112, 96), tmp_path / "wrong.onnx")
    check = compare_with_onnxruntime(model, tmp_path / "wrong.onnx", (112, 96))
    assert not check["passed"] and check["max_rel_diff"] == pytest.approx(1e-3, rel=0.05)
    assert compare_with_onnxruntime(wrong, tmp_path / "wrong.onnx", (112, 96))["passed"]


def test_missing_model_is_a_clear_error(tmp_path, capsys):
    assert export.main(["--model_path", str(tmp_path / "none.pt")]) == 1
    assert f"model file not found: {tmp_path / 'none.pt'}" in capsys.readouterr().err


def test_an_existing_output_is_kept_without_overwrite(weights, tmp_path, capsys):
    """export.py used to replace any file at --output."""
    path, _ = weights
    target = tmp_path / "deploy.onnx"
    target.write_bytes(b"someone else's graph")
    assert export.main(["--model_path", str(path), "--output", str(target), "--no_check"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{target} already exists" in err and "--overwrite" in err
    assert target.read_bytes() == b"someone else's graph"
    assert export.main(["--model_path", str(path), "--output", str(target), "--no_check", "--overwrite"]) == 0
    assert onnx.load(target).graph.input[0].name == "images"


def test_hostile_inputs_end_in_one_line(weights, tmp_path, capsys):
    """A JPEG renamed .pt, weights that do not fit their spec, a pickle that would run
    code, a read-only output folder: one line naming the file, exit 1, no traceback."""
    from hostile import read_only_folder
    from PIL import Image

    path, model = weights
    jpeg = tmp_path / "photo.pt"
    Image.fromarray(np.zeros((40, 30, 3), np.uint8)).save(jpeg, format="JPEG")
    payload = torch.load(path, weights_only=True)
    payload["spec"]["model_name"] = "sphereface20"
    torch.save(payload, tmp_path / "wrong_spec.pt")

    class RunsCode:
        def __reduce__(self):
            return (print, ("this must never run",))

    torch.save({"spec": payload["spec"], "model": RunsCode()}, tmp_path / "evil.pt")
    with read_only_folder(tmp_path / "ro") as ro:
        cases = [([str(jpeg)], [str(jpeg), "not a weights file"]),
                 ([str(tmp_path / "wrong_spec.pt")], ["wrong_spec.pt", "do not fit the spec", "sphereface20"]),
                 ([str(tmp_path / "evil.pt")], ["evil.pt", "not a weights file", "print"]),
                 ([str(path), "--output", str(ro / "m.onnx")], [str(ro / "m.onnx"), "permissions"])]
        for args, words in cases:
            assert export.main(["--model_path", *args, "--no_check"]) == 1
            captured = capsys.readouterr()
            assert "this must never run" not in captured.out
            err = captured.err
            one_line_error(err, *words)
            assert "weights_only=False" not in err


def test_nan_outputs_on_either_side_are_a_failure(tmp_path, weights, capsys):
    """Weights holding one NaN: export.py printed "max |diff| 0 ... ok" and exited 0 (Python's
    max(0.0, nan) is 0.0). Now the script refuses them before writing anything (an existing --output
    stays), --no_check too, and the comparison fails when either side holds NaN or inf."""
    path, model = weights
    broken = build_model("sphereface4", 16, (112, 96))
    broken.load_state_dict(model.state_dict())
    with torch.no_grad():
        broken.fc5.weight[3, 0] = float("nan")  # embedding component 3 is NaN for every image
    broken_path = tmp_path / "broken" / "sphereface4_16.pt"
    export_weights(broken_path, broken, {"model_name": "sphereface4", "emb_dim": 16, "input_size": [112, 96]})
    target = tmp_path / "deploy.onnx"
    target.write_bytes(b"the graph in use")
    for extra in ([], ["--no_check"]):
        assert export.main(["--model_path", str(broken_path), "--output", str(target), "--overwrite", *extra]) == 1
        captured = capsys.readouterr()
        assert captured.out == ""
        one_line_error(captured.err, f"export.py: error: {broken_path}: the network's embeddings of random images "
                                     "hold NaN or inf (2 of 32 values)", "nothing exported")
        assert target.read_bytes() == b"the graph in use"

    export_onnx(broken, (112, 96), tmp_path / "broken.onnx")
    both = compare_with_onnxruntime(broken, tmp_path / "broken.onnx", (112, 96))  # the same NaN on both sides
    assert not both["passed"] and both["nonfinite"] == {"pytorch": 4, "onnxruntime": 4} and both["values"] == 64
    assert both["max_rel_diff"] < 1e-4  # the finite components still agree, and are what the diffs measure
    onnx_only = compare_with_onnxruntime(model, tmp_path / "broken.onnx", (112, 96))
    assert not onnx_only["passed"] and onnx_only["nonfinite"] == {"pytorch": 0, "onnxruntime": 4}
    export_onnx(model, (112, 96), tmp_path / "good.onnx")
    torch_only = compare_with_onnxruntime(broken, tmp_path / "good.onnx", (112, 96))
    assert not torch_only["passed"] and torch_only["nonfinite"] == {"pytorch": 4, "onnxruntime": 0}
    assert compare_with_onnxruntime(model, tmp_path / "good.onnx", (112, 96))["nonfinite"] == {"pytorch": 0,
                                                                                                "onnxruntime": 0}
