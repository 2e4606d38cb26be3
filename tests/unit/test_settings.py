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
