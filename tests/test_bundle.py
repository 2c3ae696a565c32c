"""Model Zoo-style bundle checks: required files, metadata against the schema, network input/output against the
metadata, TorchScript export, workflow properties of every config combination, and the facts that two standalone
configs must agree on. Mirrors what the Zoo's CI runs on a submitted bundle, on CPU with tiny phantoms."""

from __future__ import annotations

import ast
import configparser
import json
import logging
import logging.handlers
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow, ckpt_export, verify_metadata, verify_net_in_out

from scripts.phantom import write_phantom_dataset

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = REPO_ROOT / "configs"
META = CONFIGS / "metadata.json"
INFERENCE = CONFIGS / "inference.json"
TRAIN = CONFIGS / "train.json"
SCHEMA = REPO_ROOT.parent / "shared" / "schemas" / "meta_schema_20240725.json"
REQUIRED_FILES = [
    "LICENSE",
    "configs/metadata.json",
    "configs/inference.json",
    "configs/train.json",
    "configs/evaluate.json",
    "configs/multi_gpu_train.json",
    "configs/logging.conf",
]
MAX_TRACKED_BYTES = 25 * 1024 * 1024  # the Zoo's limit; larger files go in large_files.yml
SHARED_FACTS = ["network_def", "inplane_spacing", "intensity_percentiles", "num_classes"]
NETWORK_OVERRIDES = sorted(p.relative_to(REPO_ROOT).as_posix() for p in (CONFIGS / "networks").glob("*.json"))


def load_json(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory) -> Path:
    """Four tiny phantoms (3 training, 1 test) in the OAIZIB-CM layout."""
    root = tmp_path_factory.mktemp("phantoms")
    write_phantom_dataset(root, num_cases=4, shape=(16, 64, 64), num_test=1)
    return root


@pytest.fixture(scope="module")
def random_model(tmp_path_factory) -> Path:
    """A randomly initialised EAS U-Net from inference.json's `network_def`, saved as a plain state_dict."""
    parser = ConfigParser()
    parser.read_config(str(INFERENCE))
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / "model.pt"
    torch.save(parser.get_parsed_content("network_def").state_dict(), path)
    return path


@pytest.mark.parametrize("name", REQUIRED_FILES)
def test_required_file_present(name):
    assert (REPO_ROOT / name).is_file(), f"{name} is required by the bundle specification or the Zoo"


def test_version_in_changelog():
    meta = load_json(META)
    assert meta["version"] in meta["changelog"]
    assert next(iter(meta["changelog"])) == meta["version"], "the changelog lists the newest version first"


def test_package_versions_match_requirements():
    """metadata.json and requirements.txt pin the same versions (the Zoo installs from metadata, users from
    requirements.txt); no deprecated `optional_packages_version`, which MONAI 1.6 warns about on every run."""
    meta = load_json(META)
    pins = {}
    for line in (REPO_ROOT / "requirements.txt").read_text().splitlines():
        if "==" in line and not line.lstrip().startswith("#"):
            name, version = line.split("#")[0].strip().split("==")
            pins[name.lower()] = version
    assert "optional_packages_version" not in meta
    expected = {"monai": meta["monai_version"], "torch": meta["pytorch_version"], "numpy": meta["numpy_version"]}
    expected.update({k.lower(): v for k, v in meta["required_packages_version"].items()})
    assert {k: pins.get(k) for k in expected} == expected
    assert sorted(pins) == sorted(expected), "every pin of requirements.txt is in metadata.json, and no other"


@pytest.mark.shared
def test_verify_metadata_against_schema():
    if not SCHEMA.is_file():
        pytest.skip("../shared/schemas/meta_schema_20240725.json is not present (only on the development machines)")
    verify_metadata(meta_file=str(META), filepath=str(SCHEMA))  # raises on any schema violation


NET_CONFIGS = [["configs/inference.json"]] + [["configs/train.json", n] for n in NETWORK_OVERRIDES]


@pytest.mark.parametrize("config", NET_CONFIGS, ids=lambda c: "+".join(Path(f).stem for f in c))
def test_verify_net_in_out(config):
    """Each network (EAS U-Net and the baselines) takes and returns what metadata.json's network_data_format says."""
    verify_net_in_out(
        net_id="network_def", meta_file=str(META), config_file=[str(REPO_ROOT / c) for c in config], device="cpu"
    )


def test_ckpt_export_scripts_and_matches_eager(tmp_path, random_model):
    """`ckpt_export network_def` scripts (no tracing) the network; the TorchScript model carries the metadata and
    gives the eager model's output."""
    ts_path = tmp_path / "model.ts"
    ckpt_export(
        net_id="network_def",
        filepath=str(ts_path),
        ckpt_file=str(random_model),
        meta_file=str(META),
        config_file=str(INFERENCE),
    )
    extra = {"metadata.json": ""}
    scripted = torch.jit.load(str(ts_path), map_location="cpu", _extra_files=extra)
    assert json.loads(extra["metadata.json"])["version"] == load_json(META)["version"]

    parser = ConfigParser()
    parser.read_config(str(INFERENCE))
    eager = parser.get_parsed_content("network_def")
    eager.load_state_dict(torch.load(random_model, map_location="cpu", weights_only=True))
    eager.eval()
    x = torch.rand(2, 1, 64, 96)
    with torch.no_grad():
        expected, actual = eager(x), scripted(x)
    assert actual.shape == (2, load_json(META)["network_data_format"]["outputs"]["pred"]["num_channels"], 64, 96)
    assert torch.allclose(actual, expected, atol=1e-4)


def test_ckpt_export_carries_the_training_record(tmp_path, random_model):
    """Adding models/model_preprocessing.json to ckpt_export's config list (docs/export.md) stores it in model.ts and
    exports the network of a config that uses the model's own preprocessing."""
    from scripts.model_record import write_record

    model = tmp_path / "model.pt"  # a copy: the shared model must stay without a record
    shutil.copyfile(random_model, model)
    record = {"inplane_spacing": 0.5, "intensity_percentiles": [1.0, 99.0]}
    record_file = write_record(model, record)
    ts_path = tmp_path / "model.ts"
    configs = [str(INFERENCE), str(record_file)]
    ckpt_export(
        net_id="network_def",
        filepath=str(ts_path),
        ckpt_file=str(model),
        meta_file=str(META),
        config_file=configs,
    )
    extra = {"model_preprocessing.json": "", "inference.json": ""}
    torch.jit.load(str(ts_path), map_location="cpu", _extra_files=extra)
    assert json.loads(extra["model_preprocessing.json"]) == record
    assert json.loads(extra["inference.json"])["preprocessing_settings"]["inplane_spacing"] == "@inplane_spacing"
    parser = ConfigParser()
    parser.read_config(configs)
    assert parser.get_parsed_content("preprocessing_settings") == record


TRAIN_WORKFLOWS = {
    "train": ["configs/train.json"],
    "train+evaluate": ["configs/train.json", "configs/evaluate.json"],
    "train+train_from_labels": ["configs/train.json", "configs/train_from_labels.json"],
    "train+demo": ["configs/train.json", "configs/demo.json"],
    "train+optim_adamw+demo": ["configs/train.json", "configs/optim_adamw.json", "configs/demo.json"],
    **{f"train+{Path(n).stem}": ["configs/train.json", n] for n in NETWORK_OVERRIDES},
}


@pytest.mark.parametrize("name", sorted(TRAIN_WORKFLOWS))
def test_train_workflow_properties(name, phantom_dir, random_model, tmp_path):
    """Every training combination defines the ids MONAI's ConfigWorkflow (and the Zoo, MONAI Label) require."""
    files = [str(REPO_ROOT / f) for f in TRAIN_WORKFLOWS[name]]
    ckpt_dir = tmp_path / "models"
    ckpt_dir.mkdir()
    if "evaluate" in name:
        shutil.copy(random_model, ckpt_dir / "model.pt")  # evaluation loads the trained model
    workflow = ConfigWorkflow(
        config_file=files,
        meta_file=str(META),
        logging_file=str(CONFIGS / "logging.conf"),
        workflow_type="train",
        dataset_dir=str(phantom_dir / "labelsTr" if "from_labels" in name else phantom_dir),
        output_dir=str(tmp_path / "eval"),
        ckpt_dir=str(ckpt_dir),
        num_workers=0,
        cache_rate=0.0,
    )
    workflow.initialize()
    assert workflow.check_properties() == []


def test_infer_workflow_properties(phantom_dir, random_model, tmp_path):
    workflow = ConfigWorkflow(
        config_file=str(INFERENCE),
        meta_file=str(META),
        logging_file=str(CONFIGS / "logging.conf"),
        workflow_type="infer",
        dataset_dir=str(phantom_dir / "imagesTs"),
        output_dir=str(tmp_path / "out"),
        ckpt_dir=str(random_model.parent),
        num_workers=0,
    )
    workflow.initialize()
    assert workflow.check_properties() == []


@pytest.mark.parametrize("key", SHARED_FACTS)
def test_inference_and_train_configs_agree(key):
    """inference.json is standalone (MONAI Label and users run it alone), so it repeats a few facts of train.json;
    a model trained with one must be run with the same network, spacing, scaling and classes."""
    assert load_json(INFERENCE)[key] == load_json(TRAIN)[key]


@pytest.mark.parametrize("override", [None, 0.0, 50.0])
def test_small_pieces_are_removed_last_with_one_threshold_in_inference_and_evaluation(override):
    """Evaluation must score what inference delivers: both chains end with the same clean-up and default."""
    from scripts.components import RemoveSmallComponentsd

    assert load_json(INFERENCE)["min_component_mm3"] == load_json(CONFIGS / "evaluate.json")["min_component_mm3"] > 0
    for files, chain in (
        ([INFERENCE], "postprocessing"),
        ([TRAIN, CONFIGS / "evaluate.json"], "validate#postprocessing"),
    ):
        parser = ConfigParser()
        parser.read_config([str(f) for f in files])
        if override is not None:
            parser["min_component_mm3"] = override
        last = parser.get_parsed_content(chain).transforms[-1]
        assert isinstance(last, RemoveSmallComponentsd) and last.keys == ("pred",)
        expected = load_json(INFERENCE)["min_component_mm3"] if override is None else override
        assert last.transform.min_volume_mm3 == expected


def test_metadata_agrees_with_configs():
    pred = load_json(META)["network_data_format"]["outputs"]["pred"]
    assert pred["num_channels"] == load_json(TRAIN)["num_classes"]
    assert pred["channel_def"] == {"0": "background", "1": "femoral cartilage", "2": "tibial cartilage"}


def test_logging_conf_uses_standard_classes_only():
    """monai >= 1.6 refuses logging configs that import other classes or evaluate non-literal args."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(CONFIGS / "logging.conf")
    for section in parser.sections():
        if not section.startswith(("handler_", "formatter_")):
            continue
        cls = parser[section].get("class")
        if cls:
            name = cls.removeprefix("logging.").removeprefix("handlers.")
            assert hasattr(logging, name) or hasattr(logging.handlers, name), f"[{section}] class={cls}"
        if "args" in parser[section]:
            ast.literal_eval(parser[section]["args"])  # literal only


def test_no_large_tracked_files():
    if not (REPO_ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout")
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True).stdout
    sizes = {f: (REPO_ROOT / f).stat().st_size for f in files.decode().split("\0") if f and (REPO_ROOT / f).is_file()}
    assert {f: s for f, s in sizes.items() if s > MAX_TRACKED_BYTES} == {}


@pytest.mark.parametrize("args", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff(args):
    """Line length 120 and the lint rules of pyproject.toml on the bundle's Python code."""
    if subprocess.run([sys.executable, "-m", "ruff", "--version"], capture_output=True).returncode != 0:
        pytest.skip("ruff is not installed (requirements-dev.txt)")
    result = subprocess.run(
        [sys.executable, "-m", "ruff", *args, "scripts", "tests"], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_optim_adamw_override_replaces_the_optimizer():
    """configs/optim_adamw.json swaps SGD for AdamW (lr 1e-3) and keeps the schedule bound to the new optimizer."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(REPO_ROOT / "configs/train.json"), str(REPO_ROOT / "configs/optim_adamw.json")])
    parser["network_def"]["features"] = [4, 8, 16, 32, 64]
    parser["device"] = "$torch.device('cpu')"
    optimizer = parser.get_parsed_content("optimizer")
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.defaults["lr"] == 0.001 and optimizer.defaults["weight_decay"] == 0.0001
    assert parser.get_parsed_content("lr_scheduler").optimizer is optimizer


def test_one_loader_pass_is_one_epoch(phantom_dir):
    """The training loader draws volumes for a whole epoch (shuffled passes over the training set, repeated), so
    ignite never restarts it mid-epoch; a restart forks all loader workers again, which on the H100 host cost most of
    the epoch (docs/benchmarks.md)."""
    parser = ConfigParser()
    parser.read_config(str(REPO_ROOT / "configs/train.json"))
    parser.update({"dataset_dir": str(phantom_dir), "cache_rate": 0.0, "num_workers": 0})
    parser.update({"slices_per_epoch": 40, "batch_size": 8, "slices_per_volume": 4})
    loader = parser.get_parsed_content("train#dataloader")
    assert parser.get_parsed_content("iterations_per_epoch") == 5
    assert len(loader) == 5  # 10 volume draws, 2 per batch
    n = len(loader.dataset)
    drawn = list(iter(loader.sampler))
    assert len(drawn) == 10 and set(drawn) == set(range(n)) and n < 10
    assert all(sorted(drawn[k : k + n]) == list(range(n)) for k in range(0, 10 - n + 1, n))  # whole shuffled passes


@pytest.mark.parametrize("app_dir, preset", [(None, "oai-zib"), ("/srv/monailabel/apps/monaibundle", "cartilage")])
def test_monailabel_server_reads_labels_in_the_bundle_classes(app_dir, preset, monkeypatch, tmp_path):
    """Under a MONAI Label server (it exports MONAI_LABEL_APP_DIR), the datastore's labels are in the bundle's own
    classes and models/model.pt is fine-tuned in place: the stock app needs no settings for either."""
    from scripts.handlers import monailabel_server

    monkeypatch.delenv("MONAI_LABEL_APP_DIR", raising=False)
    if app_dir:
        monkeypatch.setenv("MONAI_LABEL_APP_DIR", app_dir)
    (tmp_path / "model.pt").write_bytes(b"an earlier model")
    parser = ConfigParser()
    parser.read_config(str(REPO_ROOT / "configs/train.json"))
    parser.update({"ckpt_dir": str(tmp_path)})
    assert parser.get_parsed_content("monailabel_server") is bool(app_dir) is monailabel_server()
    assert parser.get_parsed_content("active_label_preset") == preset
    assert parser.get_parsed_content("label_transforms")[0].preset.name == preset
    # check_run_dir, here over a models/ folder that holds a model.pt
    step = next(i for i, e in enumerate(parser["prepare_run"]) if "check_run_dir" in str(e))
    if app_dir:
        assert parser.get_parsed_content(f"prepare_run#{step}") is True
    else:
        with pytest.raises(SystemExit, match="already holds model.pt"):
            parser.get_parsed_content(f"prepare_run#{step}")


def test_label_preset_override_still_applies_outside_monailabel(monkeypatch):
    monkeypatch.delenv("MONAI_LABEL_APP_DIR", raising=False)
    parser = ConfigParser()
    parser.read_config(str(REPO_ROOT / "configs/train.json"))
    parser.update({"label_preset": "oaizib-cm"})
    assert parser.get_parsed_content("active_label_preset") == "oaizib-cm"
    assert parser["datalist"]["label_preset"] == "@active_label_preset"  # label codes are checked with it too


@pytest.mark.parametrize("configs", [["train.json"], ["inference.json"], ["train.json", "multi_gpu_train.json"]])
@pytest.mark.parametrize("shifted", [False, True])
def test_shifted_depthwise_key(configs, shifted):
    """`shifted_depthwise` makes the workflow's `network` compute its depthwise convolutions as shifted sums (for
    torch.compile), in place on `network_def`'s instance, so checkpoints and folding see the same module."""
    from scripts.networks import ShiftedDepthwiseConv

    parser = ConfigParser()
    parser.read_config([str(CONFIGS / c) for c in configs])
    parser.update({"device": "$torch.device('cpu')", "shifted_depthwise": shifted})
    parser["network_def"]["features"] = [4, 8, 16, 32, 64]
    if "multi_gpu_train.json" in configs:  # the DDP wrapper needs a process group: build its module alone
        parser["network"] = parser["network"]["module"]
    network = parser.get_parsed_content("network")
    assert network is parser.get_parsed_content("network_def")
    assert sum(isinstance(m, ShiftedDepthwiseConv) for m in network.modules()) == (22 if shifted else 0)


@pytest.mark.parametrize(
    ("configs", "device", "expected"),
    [
        (["train.json"], "cuda:0", {"mode": "reduce-overhead"}),
        (["train.json"], "cpu", {}),
        (["train.json", "multi_gpu_train.json"], "cuda:0", {}),
        (["inference.json"], "cuda:0", {}),
    ],
)
def test_compile_mode_per_device(configs, device, expected):
    """`--compile True` trains with CUDA graphs on a GPU (train.json at 464-471 slices/s against 274-306 eager on an
    H100, docs/benchmarks.md), the default mode on a CPU; DDP and inference keep the default mode (not measured)."""
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / c) for c in configs])
    parser.update({"device": f"$torch.device('{device}')"})
    assert parser.get_parsed_content("compile_kwargs") == expected


@pytest.mark.parametrize(
    ("config", "engine", "data"),
    [("configs/train.json", "train#trainer", ""), ("configs/inference.json", "evaluator", "imagesTs")],
)
def test_compile_kwargs_reach_torch_compile(phantom_dir, monkeypatch, config, engine, data):
    """`compile_kwargs` is handed to torch.compile by MONAI's engines (e.g. {'mode': 'max-autotune'}, which made a
    volume 15 % faster on the H100 than the default mode, docs/benchmarks.md); nothing is compiled without `compile`."""
    calls = []
    monkeypatch.setattr(torch, "compile", lambda module, **kwargs: calls.append(kwargs) or module)
    for compile_, expected in ((False, []), (True, [{"mode": "max-autotune", "dynamic": False}])):
        calls.clear()
        parser = ConfigParser()
        parser.read_config(str(REPO_ROOT / config))
        parser.update({"dataset_dir": str(phantom_dir / data), "num_workers": 0, "cache_rate": 0.0})
        parser.update({"device": "$torch.device('cpu')", "compile": compile_})
        parser.update({"compile_kwargs": {"mode": "max-autotune", "dynamic": False}})
        parser["network_def"]["features"] = [4, 8, 16, 32, 64]
        parser.get_parsed_content(engine)
        assert calls == expected


@pytest.mark.parametrize(
    "test_cases, expected", [([{"image": "t.nii.gz", "label": "t.nii.gz"}], "test"), ([], "validation")]
)
def test_evaluation_scores_the_test_split_and_says_when_it_falls_back(test_cases, expected):
    """evaluate.json scores the test split; a datalist without one is scored on validation, and eval_split (named in
    summary.md and warned about by SegmentationReport) says so."""
    parser = ConfigParser()
    parser.read_config([str(REPO_ROOT / "configs/train.json"), str(REPO_ROOT / "configs/evaluate.json")])
    validation = [{"image": "v.nii.gz", "label": "v.nii.gz"}]
    parser.update({"datalist": {"training": [], "validation": validation, "test": test_cases}})
    assert parser.get_parsed_content("eval_split") == expected
    assert parser.get_parsed_content("validate#dataset#data") == (test_cases or validation)
    report = next(h for h in parser["validate#handlers"] if "SegmentationReport" in str(h.get("_target_", "")))
    assert report["scored_split"] == "@eval_split"


def test_training_datalist_requires_validation_only_when_the_run_validates():
    def required(*configs: str, **overrides) -> bool:
        parser = ConfigParser()
        parser.read_config([str(REPO_ROOT / "configs" / c) for c in configs])
        parser.update(overrides)
        return parser.get_parsed_content("datalist#require_validation")

    assert required("train.json") is True
    assert required("train.json", validate_final_epoch=False, val_interval=99, max_epochs=3) is False  # benchmark
    assert required("train.json", "evaluate.json") is False  # evaluation scores test (or validation) cases
