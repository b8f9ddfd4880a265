"""bench/gpu_check.py at its --quick sizes on the CPU: every row measured, the estimate
of the paper run's length follows from the measured rate."""
import json
import math

import pytest

import gpu_check  # bench/gpu_check.py (pytest.ini puts bench/ on the path)


@pytest.mark.slow
def test_quick_run_on_cpu_fills_the_summary(tmp_path, capsys):
    out = tmp_path / "check.json"
    result = gpu_check.main(["--quick", "--device", "cpu", "--model", "sphereface4", "--workers", "1",
                             "--json", str(out)])
    assert json.loads(out.read_text())["rows"] == json.loads(json.dumps(result["rows"]))
    printed = capsys.readouterr().out
    whats = [r["what"] for r in result["rows"]]
    for start in ("train sphereface4 112x96, batch 8, 100 classes", "training loader", "MTCNN detect_batch",
                  "LFW-size features (32 images), from JPEG", "LFW-size features (32 images), network alone"):
        assert any(w.startswith(start) for w in whats), start
        assert start in printed
    for row in result["rows"]:
        assert isinstance(row["value"], float) and math.isfinite(row["value"]) and row["value"] > 0, row
    rate = result["train"]["bf16"]["images_per_s"]
    hours = 28000 * 512 / rate / 3600  # the paper setting's 28k iterations of 512 images (2 GPUs x 256)
    assert f"28k iterations x 512: {hours:.2f} h" in result["rows"][0]["note"]
    assert math.isfinite(result["train"]["bf16"]["loss"])
    assert result["mtcnn"]["found"] == 2  # the photos are turned and re-lit astronaut portraits
    ratio = result["mtcnn"]["images_per_s"] / result["mtcnn"]["facenet_images_per_s"]
    assert f"{ratio:.2f}x facenet's detect_face" in printed
    assert result["extraction"]["count"] == 32
    # the uniform loss at the quick size: the plain step, uniform_loss_of's, the split products' error,
    # and the networks' steps beside them (IResNet-50 included when build_model knows it)
    uniform = result["uniform_loss"]
    assert uniform["classes"] == 600
    assert abs(uniform["batch_rows_loss"] - uniform["all_rows_loss"]) <= 1e-6 * uniform["all_rows_loss"]
    for start in ("uniform loss fwd+bwd 600 x 512, every center's gradient",
                  "uniform loss fwd+bwd 600 x 512, uniform_loss_of",
                  "uniform loss split-bf16 gradient vs float64", "network step sphereface4, batch 2"):
        assert any(w.startswith(start) for w in whats), start
    assert 0 < uniform["errors"]["split"]["gradient"] < 1e-4 and uniform["errors"]["split"]["loss"] < 1e-6
    assert set(uniform["networks"]) == {"sphereface4", "iresnet50"}


@pytest.mark.slow
def test_full_sizes_end_within_the_budget_with_stopped_rows(capsys):
    """The full (GPU) sizes cannot finish on this CPU in 20 s: every stage must be cut by its deadline,
    reported as "stopped", and the check must end within the budget (plus clean-up), whatever the machine."""
    import time

    budget = 20
    # The alarm lands between Python bytecodes, so the one sphereface20 step (batch 256) running when it
    # rings still finishes: on this loaded 2-core CPU that step alone takes 5-15 s. Hence the margin.
    limit = budget + 40
    began = time.perf_counter()
    result = gpu_check.main(["--device", "cpu", "--budget", str(budget), "--no_compile", "--workers", "1"])
    elapsed = time.perf_counter() - began
    assert elapsed < limit, elapsed
    stopped = [r for r in result["rows"] if r["value"] == "stopped"]
    whats = [r["what"] for r in stopped]
    assert any(w.startswith("train sphereface20 112x96, batch 256, 10572 classes") for w in whats), whats
    assert any(w.startswith("LFW-size features (13233 images)") for w in whats), whats
    # Once the budget is spent, the later stages get no time at all rather than their own caps.
    assert stopped[-1]["note"] == "out of time after 0 s", stopped[-1]
    total = result["rows"][-1]
    assert total["what"] == "gpu_check total" and total["value"] < limit
    assert "stopped" in capsys.readouterr().out


def test_uniform_loss_rows_and_what_fails_the_stage():
    """A NaN loss or an error above 1e-4 of float64 (docs/DESIGN.md §4.6) fails the check, NaN errors too;
    errors within it and finite losses do not."""
    measured = {"classes": 600, "batch_classes": 345, "all_rows_s": 2.0, "batch_rows_s": 1.0, "all_rows_loss": 1.0,
                "batch_rows_loss": 1.0, "flops_all_rows": 1e9, "flops_batch_rows": 5e8, "split_on_tensor_cores": False,
                "errors": {"split": {"loss": 1e-8, "gradient": 2e-6}, "float32": {"loss": 1e-8, "gradient": 2e-6}},
                "networks": {"sphereface20": 0.5, "iresnet50": 0.25}}
    rows = gpu_check.uniform_loss_rows(measured, 256, "bf16 autocast")
    assert [r["value"] for r in rows[-2:]] == [0.5, 0.25] and "4.00x this" in rows[-1]["note"]
    assert rows[1]["note"].startswith("speed-up 2.00x") and "below 0.0001" in rows[2]["note"]
    assert gpu_check.uniform_loss_failures(measured) == [] and gpu_check.uniform_loss_failures(None) == []
    wrong = {**measured, "batch_rows_loss": float("nan"),
             "errors": {"split": {"loss": 1e-8, "gradient": 1.5e-4}, "float32": {"loss": float("nan"), "gradient": 0}}}
    assert gpu_check.uniform_loss_failures(wrong) == ["uniform loss batch_rows_loss nan",
                                                      "uniform loss split gradient error 1.5e-04 > 0.0001",
                                                      "uniform loss float32 loss error nan > 0.0001"]
