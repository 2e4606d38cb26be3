import sys, os, time, threading
sys.path.insert(0, "/work/main"); os.chdir("/work/main")
os.environ["TOKENIZERS_PARALLELISM"] = "false"
import torch
from perf.lib.inprocess import load_entries, entry_inputs
from backend.embedding.model import EmbeddingModel
from backend.embedding.preprocess import EmbeddingPreprocessor
from backend.settings import ModelSettings, PreprocessSettings
mp = sys.argv[1]; nthreads = int(sys.argv[2]); intra = int(sys.argv[3]); batch = int(sys.argv[4])
torch.set_num_threads(intra)
pre = EmbeddingPreprocessor(PreprocessSettings(model_path=mp))
model = EmbeddingModel(ModelSettings(model_path=mp, device="cpu"))
torch.set_num_threads(intra)
model.warmup()
wl = sys.argv[5] if len(sys.argv) > 5 else "text_200"
rows = [r for e in load_entries(wl, batch) for r in pre.prepare_request(entry_inputs(e))]
model.embed(rows)
count = [0] * nthreads
stop = time.perf_counter() + 10
def loop(i):
    while time.perf_counter() < stop:
        model.embed(rows); count[i] += len(rows)
t0 = time.perf_counter(); c0 = time.process_time()
ts = [threading.Thread(target=loop, args=(i,)) for i in range(nthreads)]
[t.start() for t in ts]; [t.join() for t in ts]
el = time.perf_counter() - t0
print(f"{mp.split('-')[-1]} {wl} threads={nthreads} intra={intra} batch={batch}: {sum(count)/el:.1f} rows/s, cpu/row {1000*(time.process_time()-c0)/sum(count):.2f} ms")
