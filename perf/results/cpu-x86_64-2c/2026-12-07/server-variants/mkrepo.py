import sys; sys.path.insert(0, "/work/main")
from pathlib import Path
from perf.lib.variants import variant_repository
def two(config):
    config.instance_group[0].count = int(sys.argv[2])
variant_repository(Path(sys.argv[1]), {"qwen3_vl_embedding_model": two})
print("ok")
