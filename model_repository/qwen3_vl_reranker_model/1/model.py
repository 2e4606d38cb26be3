"""Triton adapter for the reranker model step; all logic lives in backend.reranking.model."""

from backend import backpressure, metrics, triton_io
from backend.protocol import MODEL_INPUTS
from backend.reranking.model import RerankModel, rerank_step
from backend.runtime.scheduler import StepWorker
from backend.settings import RERANKER_ENV, RerankModelSettings, load_settings


class TritonPythonModel:
    def initialize(self, args):
        triton_io.configure_logging(args["model_name"])
        settings = load_settings(RerankModelSettings, triton_io.model_parameters(args), RERANKER_ENV)
        self.model = RerankModel(settings, *triton_io.instance_placement(args))
        if settings.warmup:
            self.model.warmup()
        self.metrics = metrics.ModelMetrics(args["model_name"], self.model.stats)
        self.worker = StepWorker(
            rerank_step(self.model),
            self.model.platform.enter_thread,
            lambda: self.metrics.record(self.model.stats),
            backpressure.Publisher(backpressure.channel_path(args["model_name"])),
        )
        triton_io.freeze_loaded_objects()

    def execute(self, requests):
        # Queued for the worker thread, cheap ones first (backend.runtime.scheduler). What is done by the time
        # execute() returns is returned; the rest is answered through each request's response sender as
        # soon as its rows are done. execute() returns once the backlog is at most one token budget.
        results = self.worker.submit(
            [
                (triton_io.read_inputs(request, MODEL_INPUTS), *triton_io.answer_later(request))
                for request in requests
            ]
        )
        return triton_io.returned_responses(results)

    def finalize(self):
        self.worker.close()
        self.metrics.close()
