"""The Helm chart rendered for every shipped variant (deploy.render, no helm, no cluster): valid Kubernetes
objects by the API's own schemas (kubernetes-validate, offline), and the parts that make a deployment scale
and survive: HPA on the queue metric, probes, shared memory, devices, grace period, PDB, metrics scraping."""

from __future__ import annotations

import kubernetes_validate
import pytest
import yaml

from deploy import gotemplate
from deploy.render import (
    CHART,
    DEPLOY,
    VARIANTS,
    Variant,
    documents,
    merge,
    render_chart,
    render_variant,
    variant_values,
    write_all,
)

# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest the validator knows.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
# Custom resources the validator has no schema for; their shape is asserted below instead.
CUSTOM_KINDS = {"PodMonitor", "ServingRuntime", "InferenceService"}


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys silently; the API server would reject or lose one."""


def _mapping_without_duplicates(loader, node, deep=False):
    keys = [loader.construct_object(key, deep=deep) for key, _ in node.value]
    duplicates = {key for key in keys if keys.count(key) > 1}
    if duplicates:
        raise yaml.constructor.ConstructorError(None, None, f"duplicate keys {duplicates}", node.start_mark)
    return loader.construct_mapping(node, deep=deep)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    """Variant name -> every object it renders."""
    result = {}
    for variant in VARIANTS:
        objects = []
        for text in render_variant(variant).values():
            objects.extend(document for document in yaml.load_all(text, UniqueKeyLoader) if document)
        result[variant.name] = objects
    return result


def objects_of(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def triton_deployment(objects: list[dict]) -> dict:
    (deployment,) = [
        o for o in objects_of(objects, "Deployment") if not o["metadata"]["name"].endswith("gateway")
    ]
    return deployment


def container(deployment: dict, name: str) -> dict:
    (found,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return found


def env(container_spec: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container_spec.get("env", [])}


def test_every_size_accelerator_and_gateway_combination_is_rendered():
    combos = {(v.size, v.accelerator, v.gateway is not None) for v in VARIANTS}
    assert combos == {
        (s, a, g) for s in ("2b", "8b") for a in ("cuda", "ascend", "cpu") for g in (False, True)
    }


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_rendered_objects_pass_the_kubernetes_schemas(rendered, version):
    checked = 0
    for name, objects in rendered.items():
        for obj in objects:
            if obj["kind"] in CUSTOM_KINDS:
                continue
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                pytest.fail(f"{name}: {obj['kind']} {obj['metadata']['name']}: {error}")
            checked += 1
    assert checked >= 4 * len(VARIANTS)  # Deployment, Service, HPA, PDB at least


def test_the_validator_rejects_a_misspelt_field(rendered):
    # Guards the test above: strict mode must catch a typo, not just accept any mapping.
    deployment = triton_deployment(rendered["8b-cuda"])
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_triton_pod_has_probes_shm_devices_and_grace(rendered, variant):
    values = variant_values(variant)
    deployment = triton_deployment(rendered[variant.name])
    pod = deployment["spec"]["template"]["spec"]
    triton = container(deployment, "triton")

    # Triton's HTTP binds loopback (issue 19): the kubelet checks gRPC health and the gRPC port instead.
    grpc_port = values["triton"]["grpcPort"]
    assert triton["readinessProbe"]["grpc"]["port"] == grpc_port
    assert triton["startupProbe"]["grpc"]["port"] == grpc_port
    assert triton["livenessProbe"]["tcpSocket"]["port"] == "grpc"
    assert "http" not in {port["name"] for port in triton["ports"]}
    assert "TRITON_HTTP_HOST" not in env(triton)  # the launcher's loopback default stands
    startup = triton["startupProbe"]
    startup_budget = startup["periodSeconds"] * startup["failureThreshold"]
    assert startup_budget >= (900 if variant.size == "8b" else 600)  # an 8B load from disk takes minutes

    exit_timeout = int(env(triton)["TRITON_EXIT_TIMEOUT_SECS"])
    assert (
        pod["terminationGracePeriodSeconds"]
        > exit_timeout + triton["lifecycle"]["preStop"]["sleep"]["seconds"]
    )

    shm = {v["name"]: v for v in pod["volumes"]}["shm"]["emptyDir"]
    assert shm["medium"] == "Memory" and shm["sizeLimit"]
    assert {"name": "shm", "mountPath": "/dev/shm"} in triton["volumeMounts"]

    device_resource = {"cuda": "nvidia.com/gpu", "ascend": "huawei.com/Ascend910"}.get(variant.accelerator)
    for bound in ("requests", "limits"):
        resources = triton["resources"][bound]
        if device_resource:
            assert resources[device_resource] == values["devicesPerPod"]
        else:
            assert not any("/" in key for key in resources)
    # One model-step instance per device in the pod.
    assert env(triton)["MODEL_INSTANCES"] == str(values["devicesPerPod"])
    assert env(triton)["DEVICE"] == {"cuda": "cuda", "ascend": "npu", "cpu": "cpu"}[variant.accelerator]
    assert env(triton)["MODEL_PATH"].endswith(f"Qwen3-VL-Embedding-{variant.size.upper()}")
    assert triton["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_hpa_scales_the_deployment_on_the_adapter_queue_metric(rendered, variant):
    objects = rendered[variant.name]
    (hpa,) = objects_of(objects, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == triton_deployment(objects)["metadata"]["name"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == adapter_metric_name()
    assert float(metric["pods"]["target"]["averageValue"]) > 0
    assert "replicas" not in triton_deployment(objects)["spec"]  # the HPA owns the replica count


def adapter_metric_name() -> str:
    rules = yaml.safe_load((DEPLOY / "prometheus-adapter" / "values.yaml").read_text())["rules"]["custom"]
    (rule,) = rules
    assert "nv_inference_queue_duration_us" in rule["metricsQuery"]
    assert "nv_inference_request_success" in rule["metricsQuery"]
    return rule["name"]["as"]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_pdb_service_and_podmonitor_select_the_triton_pods(rendered, variant):
    objects = rendered[variant.name]
    pod_labels = triton_deployment(objects)["spec"]["template"]["metadata"]["labels"]
    (pdb,) = [
        o for o in objects_of(objects, "PodDisruptionBudget") if not o["metadata"]["name"].endswith("gateway")
    ]
    (monitor,) = objects_of(objects, "PodMonitor")
    (service,) = [o for o in objects_of(objects, "Service") if not o["metadata"]["name"].endswith("gateway")]
    for selector in (
        pdb["spec"]["selector"]["matchLabels"],
        monitor["spec"]["selector"]["matchLabels"],
        service["spec"]["selector"],
    ):
        assert selector.items() <= pod_labels.items()
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    ports = {p["name"] for p in service["spec"]["ports"]}
    assert {"grpc", "metrics"} <= ports and "http" not in ports  # REST is the gateway's port alone
    assert ("gateway" in ports) == (variant.gateway == "sidecar")


def test_gateway_sidecar_talks_to_localhost_and_its_deployment_to_the_service(rendered):
    sidecar = container(triton_deployment(rendered["8b-cuda-gateway"]), "gateway")
    assert env(sidecar)["TRITON_GRPC_URL"] == "localhost:8001"
    assert env(sidecar)["GATEWAY_HOST"] == "0.0.0.0"  # uvicorn's default, 127.0.0.1, is unreachable
    # The gateway answers 503 until Triton is ready: only readiness may follow that, not liveness.
    assert sidecar["readinessProbe"]["httpGet"]["path"] == "/health"
    assert "httpGet" not in sidecar["livenessProbe"]
    objects = rendered["8b-cuda-gateway-deployment"]
    assert [c["name"] for c in triton_deployment(objects)["spec"]["template"]["spec"]["containers"]] == [
        "triton"
    ]
    (gateway,) = [o for o in objects_of(objects, "Deployment") if o["metadata"]["name"].endswith("gateway")]
    (service,) = [o for o in objects_of(objects, "Service") if not o["metadata"]["name"].endswith("gateway")]
    gateway_container = gateway["spec"]["template"]["spec"]["containers"][0]
    assert env(gateway_container)["TRITON_GRPC_URL"] == f"{service['metadata']['name']}:8001"
    assert "nvidia.com/gpu" not in str(gateway_container["resources"])


def test_response_cache_is_on_with_a_size_limit_in_every_variant(rendered):
    for name, objects in rendered.items():
        cache = env(container(triton_deployment(objects), "triton"))["RESPONSE_CACHE"]
        backend, _, options = cache.partition(",")
        assert backend == "local", name
        assert int(dict(o.split("=") for o in options.split(","))["size"]) > 0, name


def test_kserve_runtime_and_inference_service_fit_together():
    runtime, service = (
        yaml.load((DEPLOY / "kserve" / f"{name}.yaml").read_text(), UniqueKeyLoader)
        for name in ("servingruntime", "inferenceservice")
    )
    assert runtime["kind"] == "ServingRuntime" and service["kind"] == "InferenceService"
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["storageUri"].startswith(("s3://", "gs://", "pvc://", "hf://", "https://"))
    runtime_env = env(runtime["spec"]["containers"][0])
    assert runtime_env["MODEL_REPOSITORY"].startswith("/mnt/models")  # where KServe puts storageUri
    assert runtime["spec"]["containers"][0]["ports"][0]["containerPort"] == int(
        runtime_env["TRITON_HTTP_PORT"]
    )
    assert model["resources"]["limits"]["nvidia.com/gpu"]


def test_make_manifests_writes_one_directory_per_variant(tmp_path):
    written = write_all(tmp_path / "manifests")
    directories = {path.parent.name for path in written}
    assert directories == {v.name for v in VARIANTS} | {"kserve", "prometheus-adapter"}
    for path in written:
        assert documents(path.read_text())


def test_renderer_refuses_template_features_it_does_not_implement():
    # A template using more of Go's language than deploy.gotemplate knows must fail, not render differently.
    with pytest.raises(gotemplate.TemplateError):
        gotemplate.render_templates({"a.yaml": "{{ sha256sum .Values.x }}"}, {"Values": {"x": "1"}})
    with pytest.raises(gotemplate.TemplateError):
        gotemplate.render_templates({"a.yaml": "{{ if .Values.x }}open"}, {"Values": {"x": 1}})


def test_renderer_matches_helm_on_the_constructs_the_chart_uses():
    source = (
        '{{- define "n" -}}{{ .Release.Name }}-{{ .Values.a }}{{- end -}}\n'
        'name: {{ include "n" . }}\n'
        "{{- if eq .Values.a 2 }}\nbranch: two\n{{- else if .Values.b }}\nbranch: b\n"
        "{{- else }}\nbranch: none\n{{- end }}\n"
        "list:\n{{- range $i, $v := .Values.l }}\n  - {{ $i }}={{ $v | quote }}\n{{- end }}\n"
        "map: {{- toYaml .Values.m | nindent 2 }}\n"
        'missing: {{ .Values.nope | default "fallback" }} {{ printf "%s:%d" "h" (int .Values.a) }}\n'
    )
    out = gotemplate.render_templates(
        {"t.yaml": source},
        {"Release": {"Name": "r"}, "Values": {"a": 2, "l": ["x"], "m": {"z": 1, "a": [True]}}},
    )["t.yaml"]
    assert (
        out
        == 'name: r-2\nbranch: two\nlist:\n  - 0="x"\nmap:\n  a:\n  - true\n  z: 1\nmissing: fallback h:2\n'
    )


def test_values_files_only_override_keys_the_chart_defines():
    # A misspelt key in values/<x>.yaml would silently do nothing under helm.
    base = yaml.safe_load((CHART / "values.yaml").read_text())

    def check(override, defaults, where):
        for key, value in override.items():
            assert key in defaults, f"{where}: unknown key {key}"
            if isinstance(value, dict) and defaults[key]:
                check(value, defaults[key], f"{where}.{key}")

    for path in sorted((CHART / "values").glob("*.yaml")):
        check(yaml.safe_load(path.read_text()), base, path.name)
    assert Variant("2b", "cpu").values_files[-1].name == "2b.yaml"


def test_weights_come_from_init_containers_or_a_read_only_claim():
    variant = Variant("8b", "cuda")
    fetched = yaml.safe_load(render_variant(variant)["deployment.yaml"])["spec"]["template"]["spec"]
    commands = [c["command"] for c in fetched["initContainers"]]
    assert commands == [
        ["hf", "download", f"Qwen/Qwen3-VL-{kind}-8B", "--local-dir", f"/models/Qwen3-VL-{kind}-8B"]
        for kind in ("Embedding", "Reranker")
    ]
    # The image is offline by default; the downloader must not be.
    assert all(env(c)["HF_HUB_OFFLINE"] == "0" for c in fetched["initContainers"])
    assert {v["name"]: v for v in fetched["volumes"]}["models"]["emptyDir"]["sizeLimit"]

    values = merge(variant_values(variant), {"weights": {"existingClaim": "qwen3-vl-weights"}})
    claimed = yaml.safe_load(render_chart(values)["deployment.yaml"])["spec"]["template"]["spec"]
    assert "initContainers" not in claimed
    models = {v["name"]: v for v in claimed["volumes"]}["models"]["persistentVolumeClaim"]
    assert models == {"claimName": "qwen3-vl-weights", "readOnly": True}


def test_redis_cache_is_shared_by_replicas_with_its_password_from_a_secret():
    values = merge(
        variant_values(Variant("8b", "cuda")),
        {"responseCache": {"backend": "redis", "redis": {"host": "redis", "passwordSecret": "redis-auth"}}},
    )
    deployment = yaml.safe_load(render_chart(values)["deployment.yaml"])
    triton = container(deployment, "triton")
    assert env(triton)["RESPONSE_CACHE"] == "redis,host=redis,port=6379"
    (password,) = [e for e in triton["env"] if e["name"] == "REDIS_PASSWORD"]
    assert password["valueFrom"]["secretKeyRef"] == {"name": "redis-auth", "key": "REDIS_PASSWORD"}
    kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)

    values["responseCache"]["enabled"] = False
    disabled = container(yaml.safe_load(render_chart(values)["deployment.yaml"]), "triton")
    assert "RESPONSE_CACHE" not in env(disabled)


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_entrypoint_accepts_the_environment_the_chart_gives_it(rendered, variant, tmp_path):
    # Helm holds numbers from values as float64 and prints big ones as 1.6777216e+07 unless the template
    # says `int`; the renderer does the same, so the entrypoint here parses what it would get in a pod.
    from deploy import serve

    values = variant_values(variant)
    pod_env = env(container(triton_deployment(rendered[variant.name]), "triton"))
    assert serve.parse_pipelines(pod_env["PIPELINES"]) == values["pipelines"]
    argv = serve.command(pod_env, [], tmp_path)
    assert f"--backend-config=python,shm-default-byte-size={values['triton']['shmDefaultBytes']}" in argv
    assert f"--cache-config=local,size={values['responseCache']['localSizeBytes']}" in argv
    for name in ("MODEL_INSTANCES", "PREPROCESS_INSTANCES", "TRITON_EXIT_TIMEOUT_SECS", "TRITON_HTTP_PORT"):
        assert pod_env[name].isdigit(), (name, pod_env[name])


def test_renderer_prints_numbers_from_values_as_helm_does():
    values = gotemplate.helm_numbers({"big": 16777216, "small": 8000, "flag": True})
    out = gotemplate.render_templates(
        {"t.yaml": "{{ .Values.big }} {{ int .Values.big }} {{ .Values.small | quote }} {{ .Values.flag }}"},
        {"Values": values},
    )["t.yaml"]
    assert out == '1.6777216e+07 16777216 "8000" true'
    with pytest.raises(gotemplate.TemplateError):  # Go prints %!d(float64=8000)
        gotemplate.render_templates({"t.yaml": '{{ printf "%d" .Values.small }}'}, {"Values": values})
    assert gotemplate.to_yaml({"size": 2147483648.0}) == "size: 2147483648"


def test_one_pipeline_fetches_and_serves_only_its_own_model():
    values = merge(variant_values(Variant("2b", "cuda")), {"pipelines": ["embedding"]})
    pod = yaml.safe_load(render_chart(values)["deployment.yaml"])["spec"]["template"]["spec"]
    assert [c["command"][2] for c in pod["initContainers"]] == ["Qwen/Qwen3-VL-Embedding-2B"]
    assert env(pod["containers"][0])["PIPELINES"] == "embedding"


def index_job_values(**index_job) -> dict:
    settings = {"enabled": True, "source": {"claim": "corpus"}, "output": {"claim": "shared-index"}}
    return merge(variant_values(Variant("8b", "cuda")), {"indexJob": merge(settings, index_job)})


def test_index_job_is_off_by_default(rendered):
    assert not any(objects_of(objects, "Job") for objects in rendered.values())


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_index_job_is_an_indexed_job_whose_pods_each_take_their_part(version):
    from qwen3vl_client.bulk.sources import parse_shard
    from qwen3vl_client.cli import build_parser

    job = yaml.safe_load(render_chart(index_job_values(workers=3))["index-job.yaml"])
    kubernetes_validate.validate(job, version, strict=True)
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 3, 3)
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"  # backoffLimitPerIndex needs it
    (index,) = pod["containers"]
    (completion,) = [e for e in index["env"] if e["name"] == "JOB_COMPLETION_INDEX"]
    assert "job-completion-index" in completion["valueFrom"]["fieldRef"]["fieldPath"]
    assert {m["mountPath"]: m.get("readOnly", False) for m in index["volumeMounts"]} == {
        "/corpus": True,
        "/index": False,
    }
    # What the kubelet runs in pod k: the real CLI parses it into part k of 3, against the release's Triton.
    parts = set()
    for worker in range(3):
        argv = [arg.replace("$(JOB_COMPLETION_INDEX)", str(worker)) for arg in index["args"]]
        args = build_parser().parse_args(argv)
        assert (args.command, str(args.source), str(args.out)) == ("index", "/corpus", "/index")
        assert args.url == "qwen3vl-qwen3-vl:8001" and args.protocol == "grpc" and args.db_uri is None
        parts.add(parse_shard(args.shard))
    assert parts == {(0, 3), (1, 3), (2, 3)}


def test_index_job_writes_to_a_milvus_server_with_its_token_from_a_secret():
    values = index_job_values(dbUri="http://milvus:19530", dbTokenSecret="milvus-auth", parallelism=2)
    job = yaml.safe_load(render_chart(values)["index-job.yaml"])
    (index,) = job["spec"]["template"]["spec"]["containers"]
    assert index["args"][index["args"].index("--db-uri") + 1] == "http://milvus:19530"
    (token,) = [e for e in index["env"] if e["name"] == "QWEN3VL_DB_TOKEN"]
    assert token["valueFrom"]["secretKeyRef"] == {"name": "milvus-auth", "key": "QWEN3VL_DB_TOKEN"}
    assert job["spec"]["parallelism"] == 2


def test_index_job_needs_its_claims():
    with pytest.raises(gotemplate.TemplateError, match="indexJob.output.claim"):
        render_chart(index_job_values(output={"claim": ""}))
