import pytest

from backend.errors import ConfigError
from backend.settings import EMBEDDING_ENV, ModelSettings, PreprocessSettings, load_settings, read_parameters


def test_parameters_are_typed_and_empty_means_default():
    settings = load_settings(
        PreprocessSettings,
        {"max_length": "4096", "video_fps": "2", "default_instruction": "", "EXECUTION_ENV_PATH": "x"},
        environ={},
    )
    assert settings.max_length == 4096
    assert settings.vision.video_fps == 2.0
    assert settings.default_instruction == "Represent the user's input."


def test_environment_overrides_win():
    settings = load_settings(
        ModelSettings,
        {"device": "cpu", "model_path": "/a"},
        EMBEDDING_ENV,
        environ={"DEVICE": "cuda:1", "MODEL_PATH": "/b"},
    )
    assert (settings.device, settings.model_path) == ("cuda:1", "/b")


@pytest.mark.parametrize(
    "parameters",
    [
        {"device": "tpu"},
        {"dtype": "int4"},
        {"token_budget": "0"},
        {"token_budget": "many"},
        {"tokne_budget": "5"},
        {"warmup": "perhaps"},
    ],
)
def test_bad_parameters_are_config_errors(parameters):
    with pytest.raises(ConfigError):
        load_settings(ModelSettings, parameters, environ={})


def test_read_parameters_from_a_triton_model_config():
    config = {"parameters": {"device": {"string_value": "cpu"}, "warmup": {"string_value": "false"}}}
    assert read_parameters(config) == {"device": "cpu", "warmup": "false"}
    assert load_settings(ModelSettings, read_parameters(config), environ={}).warmup is False


def test_the_docs_document_every_parameter_with_its_default():
    import re

    from backend.settings import RerankModelSettings, RerankPreprocessSettings, parameter_table
    from tests.conftest import REPO

    page = (REPO / "docs" / "configuration.md").read_text()
    section = page[page.index("## Model parameters") : page.index("### The reranker's models")]
    documented = {}
    for names, defaults in re.findall(
        r"^\| ((?:`\w+`(?: / )?)+) \| ((?:`[^`]*`(?: / )?)+) \|", section, re.M
    ):
        for name, default in zip(re.findall(r"`(\w+)`", names), re.findall(r"`([^`]*)`", defaults)):
            documented[name] = default
    assert len(documented) >= 25

    def same(documented_value: str, default: str) -> bool:
        try:
            return float(documented_value) == float(default)
        except ValueError:
            return documented_value.lower() == default.lower()

    for cls in (PreprocessSettings, ModelSettings, RerankPreprocessSettings, RerankModelSettings):
        for name, default in parameter_table(cls):
            assert name in documented, f"docs/configuration.md does not list {name}"
            if cls in (PreprocessSettings, ModelSettings):  # the reranker's own defaults are in prose
                assert same(documented[name], default), (name, documented[name], default)
    known = {name for cls in (PreprocessSettings, ModelSettings) for name, _ in parameter_table(cls)}
    assert set(documented) <= known, set(documented) - known
