import sys; sys.path.insert(0, "/work/main")
from pathlib import Path
from perf.lib.variants import variant_repository
key, value = sys.argv[2], sys.argv[3]
def edit(config):
    assert key in config.parameters
    config.parameters[key].string_value = value
variant_repository(Path(sys.argv[1]), {"qwen3_vl_embedding_model": edit})
print("ok")
